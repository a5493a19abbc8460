"""One home for a run's set-up: `cprec train`, `cprec prt`, `cprec schedule` and the
benchmarks all assemble their parts here, in the same order, from the same config.

``plan_run`` resolves what is known without loading data (length, bounds, schedule);
``build_run`` loads the data and builds model, quantizer, ledger, optimizer and the
precision that drives the layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cprec.config import ScheduleConfig, TrainConfig, TrainerConfig
from cprec.cost import CostLedger, measure_macs
from cprec.errors import ConfigError
from cprec.models import build_model, check_model_fits
from cprec.numerics.optim import build_lr_scheduler, build_optimizer
from cprec.precision.bounds import resolve_bounds
from cprec.precision.ladder import Ladder, run_ladders
from cprec.precision.ldp import learned_precision
from cprec.precision.scheduled import ScheduledPrecision, last_layer_rule
from cprec.precision.schedules import PrecisionSchedule, build_schedule
from cprec.quant import QuantRNG, build_quantized, format_bits
from cprec.quant.recipes import ladder_recipes
from cprec.rng import seed_everything
from cprec.tasks.base import Task
from cprec.tasks.families import build_task, task_family, task_shape


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; nothing else in cprec names a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device", name, "no CUDA device is available; use auto or cpu")
    return torch.device(name)


def steps_per_epoch(n_train: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches per pass over the data (with ``drop_last`` the last partial batch is dropped)."""
    batch = min(batch_size, n_train)
    return max(n_train // batch if drop_last else -(-n_train // batch), 1)


def total_steps(trainer: TrainerConfig, n_train: int) -> int:
    """``trainer.steps`` when set, else ``trainer.epochs`` passes over the training data."""
    return trainer.steps or trainer.epochs * steps_per_epoch(n_train, trainer.batch_size,
                                                              trainer.drop_last)


def probe_steps(schedule: ScheduleConfig) -> int:
    """Steps a deficit probe adds before the run proper (Better Schedules' crit_learn.py:
    the K low-precision steps come on top of a full run)."""
    return schedule.deficit_steps if schedule.kind == "deficit" else 0


def check_batch_fits(cfg: TrainConfig, n_train: int) -> None:
    """A batch larger than the training set would shrink to it (every step one pass over all
    of it): refused, naming both sizes. A task that trains on all its data at every step
    (a graph) has no batch to check."""
    unit, batch = task_family(cfg.dataset.name).unit, cfg.trainer.batch_size
    if unit is None or batch <= n_train:
        return
    subset = cfg.dataset.train_subset
    where = f"dataset={cfg.dataset.name}" + (f" with dataset.train_subset={subset}" if subset else "")
    raise ConfigError("trainer.batch_size", batch, f"{where} has {n_train} training {unit}, fewer "
                      f"than one batch; use trainer.batch_size<={n_train} or more training data")


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, known before any data is loaded."""

    total_steps: int  # the deficit probe's prefix included
    schedule: PrecisionSchedule
    bounds_source: str
    lr_start: int = 0  # steps before the lr schedule starts (the deficit probe's prefix)


def plan_run(cfg: TrainConfig, n_train: int | None = None,
             bounds: tuple[int, int, str] | None = None) -> RunPlan:
    """Length, precision bounds and schedule of the run ``cfg`` describes.

    ``n_train`` is the number of training samples; without it the dataset's known size is
    used (schedule previews), so nothing is loaded. ``bounds`` are ``resolve_bounds(cfg)``
    when the caller already has them.
    """
    if n_train is None:
        n_train = task_shape(cfg.dataset)[1]
    check_batch_fits(cfg, n_train)
    prefix = probe_steps(cfg.schedule)
    steps = total_steps(cfg.trainer, n_train) + prefix
    lo, hi, source = bounds or resolve_bounds(cfg)
    milestones = cfg.optim.milestones if cfg.optim.lr_schedule == "multistep" else None
    schedule = build_schedule(cfg.schedule, steps, (lo, hi), format_bits(cfg.quant), milestones)
    return RunPlan(steps, schedule, source, prefix)


@dataclass
class ModelParts:
    """Data, quantized model, cost ledger and optimizer: what every training-like job needs."""

    cfg: TrainConfig
    device: torch.device
    task: Task
    model: nn.Module
    qrng: QuantRNG
    ledger: CostLedger
    optimizer: torch.optim.Optimizer
    rungs: dict | None  # a ladder of formats' layer recipes by (fw, bw) widths (recipes.ladder_recipes)


def build_model_parts(cfg: TrainConfig, batch_size: int,
                      ladders: tuple[Ladder | None, Ladder | None] | None = None) -> ModelParts:
    """Seed, load the task's data, build and quantize the model, measure its MACs.

    ``ladders`` (forward, errors') are the rungs the layers may be set to (default: the
    schedule's). The order is part of the result: the seed comes first, then the data,
    then the model's initialization draws from the seeded generator.
    """
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    check_model_fits(cfg.model.name, cfg.dataset.name)  # every family, before its data loads
    task = build_task(cfg, device, batch_size)
    rungs = ladder_recipes(cfg.quant, *(ladders or run_ladders(cfg)))
    model, qrng = build_quantized(build_model(cfg.model, task.info), cfg.quant, cfg.seed, rungs)
    model.to(device).train()
    ledger = CostLedger(measure_macs(model, task.sample_input()))
    return ModelParts(cfg, device, task, model, qrng, ledger, build_optimizer(model, cfg.optim, cfg.seed),
                      rungs)


@dataclass
class RunParts(ModelParts):
    """A training run's parts: the model parts plus its plan, lr schedule and precision."""

    plan: RunPlan
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    precision: ScheduledPrecision  # or ldp.LearnedPrecision (same methods)

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps


def build_run(cfg: TrainConfig) -> RunParts:
    """Assemble a training run from a validated config."""
    bounds = resolve_bounds(cfg)  # a missing or foreign PRT result fails before the data loads
    core = build_model_parts(cfg, cfg.trainer.batch_size)
    plan = plan_run(cfg, core.task.n_train, bounds)
    lr_scheduler = build_lr_scheduler(core.optimizer, plan.total_steps, cfg.optim, plan.lr_start)
    last = last_layer_rule(core.model, cfg.quant.last_bits, core.task.info.classes, plan.schedule)
    precision = (learned_precision(cfg, plan.schedule, core.model, core.ledger.macs, last)
                 or ScheduledPrecision(plan.schedule, core.model, last, cfg.trainer.eval_bits))
    return RunParts(**vars(core), plan=plan, lr_scheduler=lr_scheduler, precision=precision)
