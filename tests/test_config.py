"""Every config group option composes into a valid typed config and builds."""

from __future__ import annotations

import pytest
import torch

from cprec.config import TrainConfig
from cprec.data import DatasetInfo
from cprec.errors import ConfigError
from cprec.models import build_model
from cprec.paths import config_dir
from cprec.quant import build_quantized, quant_layers
from cprec.schedules import build_schedule

CONF = __import__("pathlib").Path(config_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_are_populated() -> None:
    """The names DESIGN.md promises exist as config options."""
    assert set(options("model")) >= {"mlp", "lenet", "resnet20", "resnet38", "resnet56", "resnet74",
                                     "resnet110", "mobilenetv2"}
    assert set(options("dataset")) == {"digits", "fashion_mnist", "mnist", "cifar10", "cifar100",
                                       "synthetic"}
    assert {"fp32", "static", "cpt_cosine", "deficit"} <= set(options("schedule"))
    assert len([s for s in options("schedule") if s.startswith("cpt_")]) == 12


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_builds(compose, name: str) -> None:
    cfg = compose([f"model={name}"])
    assert cfg.model.name == name
    model = build_model(cfg.model, DatasetInfo("x", 3, 32, 10))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", options("schedule"))
def test_every_schedule_option_builds(compose, name: str) -> None:
    cfg = compose([f"schedule={name}", "schedule.bounds=config"])
    sched = build_schedule(cfg.schedule, 1000)
    for step in (0, 500, 999):
        fw, bw = sched.bits_at(step)
        assert 1 <= fw <= 32 and 1 <= bw <= 32


@pytest.mark.parametrize("name", options("quant"))
def test_every_quant_option_converts(compose, name: str) -> None:
    cfg = compose([f"quant={name}"])
    model, _ = build_quantized(build_model(cfg.model, DatasetInfo("x", 1, 8, 10)), cfg.quant, 0)
    assert len(quant_layers(model)) > 0


@pytest.mark.parametrize("name", options("optim") + options("dataset") + options("experiment"))
def test_other_options_compose(compose, name: str) -> None:
    group = next(g for g in ("optim", "dataset", "experiment") if name in options(g))
    assert isinstance(compose([f"{group}={name}"]), TrainConfig)


def test_cpt_recipe_preset(compose) -> None:
    """experiment=cifar10_resnet74 sets up the paper's run (PAPERS.md 1, official recipe)."""
    cfg = compose(["experiment=cifar10_resnet74"])
    assert (cfg.model.name, cfg.dataset.name, cfg.schedule.name) == ("resnet74", "cifar10", "cpt_cosine")
    assert (cfg.trainer.steps, cfg.trainer.batch_size) == (64000, 128)
    o = cfg.optim
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.lr_schedule) == ("sgd", 0.1, 0.9, 1e-4, "multistep")
    assert o.milestones == [0.5, 0.75]
    assert (cfg.schedule.min_bits, cfg.schedule.max_bits, cfg.schedule.bw_bits) == (3, 8, 8)


def test_contract_keys_exist(compose) -> None:
    cfg = compose()
    for key in ("epochs", "steps", "batch_size", "eval_every", "checkpoint_every", "device"):
        assert hasattr(cfg.trainer, key)
    for key in ("bits", "min_bits", "max_bits", "bw_bits", "cycles", "bounds"):
        assert hasattr(cfg.schedule, key)
    for key in ("start_bits", "max_bits", "steps_per_bits", "threshold", "upper_bits"):
        assert hasattr(cfg.prt, key)
    assert cfg.quant.quantize_first is True and cfg.quant.quantize_last is False
    assert cfg.dataset.name == "digits" and cfg.schedule.name == "cpt_cosine"


@pytest.mark.parametrize("override, key", [
    ("schedule.bits=0", "schedule.bits"),
    ("schedule.min_bits=9", "schedule.min_bits"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("trainer.device=tpu", "trainer.device"),
])
def test_validation_names_the_key(compose, override: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        compose([override])
    assert e.value.key == key and key in str(e.value)
