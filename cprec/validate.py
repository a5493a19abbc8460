"""Up-front validation of a whole run's config: every group's checker, called in one place.

config.py holds the schemas and the checks of their plain ranges; the groups whose choices
are code (schedules, optimizers, loss scaling, AMP, metric sinks) check themselves in their
own modules. This module sits above both, so no group imports upward to be validated.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cprec.config import (
    TrainConfig,
    check_dataset,
    check_model,
    check_prt,
    check_quant,
    check_trainer,
    require,
)
from cprec.engine.loggers import check_loggers
from cprec.hardware.devices import check_devices
from cprec.numerics.amp import check_amp
from cprec.numerics.loss_scale import check_loss_scale
from cprec.numerics.optim import check_optim
from cprec.precision.ladder import check_ladders
from cprec.precision.schedules import check_learned_format, check_schedule
from cprec.quant.recipes import check_scaled
from cprec.tasks.vision import check_root


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Resolve a composed DictConfig into the typed object library code takes."""
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, TrainConfig):  # composed without the schema (e.g. from a dict)
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
        obj = OmegaConf.to_object(merged)
    assert isinstance(obj, TrainConfig)
    validate(obj)
    return obj


def validate(cfg: TrainConfig) -> None:
    """Check every value before any work is done; raise ConfigError naming key and range.

    The plain ranges of each schema sit beside it in config.py; a group whose choices are
    code is checked in its own module (schedules, optimizer, loss scaling, AMP, metric
    sinks); model and dataset names by their registries when built.
    """
    check_trainer(cfg.trainer)
    check_dataset(cfg.dataset)
    check_model(cfg.model)
    check_optim(cfg.optim)
    check_schedule(cfg.schedule)
    check_learned_format(cfg)
    check_ladders(cfg)
    check_quant(cfg.quant)
    check_scaled(cfg)
    check_prt(cfg.prt)
    check_loss_scale(cfg)
    check_amp(cfg)
    check_devices(cfg.cost.devices)
    check_loggers(cfg.logger)
    check_root(cfg.dataset)
    check_data_parallel(cfg)
    check_kernels(cfg)


def check_data_parallel(cfg: TrainConfig) -> None:
    """trainer.devices > 1 splits every batch over the processes (engine/data_parallel.py):
    the image datasets, ImageFolder and the language models. A graph is one batch (the
    whole graph at every step), so graph runs stay one process; refused before any starts."""
    from cprec.tasks.families import GRAPH_DATASETS

    require(cfg.trainer.devices == 1 or cfg.dataset.name not in GRAPH_DATASETS, "trainer.devices",
            cfg.trainer.devices, f"dataset={cfg.dataset.name} trains the whole graph as one batch "
            "in one process (a data-parallel graph run needs neighbour-sampled mini-batches, a "
            "different method: see the docs' Data-parallel training page); use trainer.devices=1")


def check_kernels(cfg: TrainConfig) -> None:
    """quant.kernels=int8 runs CPT's fixed-point quantizer on integer GEMMs: not a float or
    scaled format, nor a learned precision (its own differentiable quantizer, simulated)."""
    from cprec.precision.schedules import LEARNED_KINDS

    require(cfg.quant.kernels != "int8" or cfg.quant.format == "fixed", "quant.kernels", cfg.quant.kernels,
            "integer GEMMs run fixed-point layers; float and scaled formats are simulated: use "
            "quant.kernels=simulated, or auto (int8 where it applies)")
    require(cfg.quant.kernels != "int8" or cfg.schedule.kind not in LEARNED_KINDS, "quant.kernels",
            cfg.quant.kernels, f"schedule={cfg.schedule.name} learns its bits through its own "
            "quantizer on simulated GEMMs; use quant.kernels=simulated (auto runs it simulated too)")
