"""Optimizers and per-step learning-rate schedules from the ``optim`` config group.

Both are registries (name -> builder / factor function), so the names the config accepts
are these dicts' keys and nothing else. Torch is imported only when an optimizer is built,
so config validation stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from cprec.config import OptimConfig, require

if TYPE_CHECKING:
    import torch
    from torch import nn


def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def _adam(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _adamw(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


OPTIMIZERS: dict[str, Callable[[list[dict], OptimConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw}


def _multistep(step: int, total_steps: int, cfg: OptimConfig) -> float:
    return cfg.gamma ** sum(step >= int(m * total_steps) for m in cfg.milestones)


def _cosine(step: int, total_steps: int, cfg: OptimConfig) -> float:
    span = max(total_steps - cfg.warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / span))


def _constant(step: int, total_steps: int, cfg: OptimConfig) -> float:
    return 1.0


LR_SCHEDULES: dict[str, Callable[[int, int, OptimConfig], float]] = {
    "multistep": _multistep, "cosine": _cosine, "constant": _constant}


def check_optim(cfg: OptimConfig) -> None:
    """Every optimizer setting, before any work (cprec.validate calls this)."""
    from cprec.config import require, require_choice

    require_choice("optim.name", cfg.name, OPTIMIZERS)
    require(cfg.lr > 0, "optim.lr", cfg.lr, "the learning rate must be positive")
    require(cfg.grad_clip is None or cfg.grad_clip > 0, "optim.grad_clip", cfg.grad_clip,
            "a positive gradient-norm bound or null")
    require(cfg.weight_decay >= 0, "optim.weight_decay", cfg.weight_decay, "must be >= 0")
    require(0 <= cfg.momentum < 1, "optim.momentum", cfg.momentum, "must be in [0, 1)")
    require_choice("optim.lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    require(all(0 < m < 1 for m in cfg.milestones), "optim.milestones", cfg.milestones,
            "milestones are fractions of the run in (0, 1)")
    require(cfg.warmup_steps >= 0, "optim.warmup_steps", cfg.warmup_steps, "must be >= 0")
    require(cfg.warmup_lr is None or cfg.warmup_lr > 0, "optim.warmup_lr", cfg.warmup_lr,
            "a positive learning rate, or null for a linear warm-up")
    _check_weight_format(cfg)


def _check_weight_format(cfg: OptimConfig) -> None:
    """Low-precision weights: a known format, a rounding that fits it, a real dtype torch has."""
    from cprec.config import require, require_choice
    from cprec.numerics.lowp_optim import UPDATE_ROUNDING
    from cprec.numerics.weight_formats import REAL_DTYPES, parse_weight_format

    fmt = parse_weight_format(cfg.weight_format)
    require_choice("optim.update_rounding", cfg.update_rounding, UPDATE_ROUNDING)
    require_choice("optim.kahan_buffer", cfg.kahan_buffer, ("weight", "fp32"))
    require(cfg.update_rounding == "nearest" or not fmt.is_fp32, "optim.update_rounding",
            cfg.update_rounding, "rounds updates onto low-precision weights; set "
            "optim.weight_format (e.g. bf16) or use optim.update_rounding=nearest with fp32")
    state = parse_weight_format(cfg.state_format, "optim.state_format")
    require(state.fixed_bits is None, "optim.state_format", cfg.state_format,
            "optimizer state takes a float format: fp32, bf16, fp16 or e<E>m<M>")
    require(not cfg.real_dtype or cfg.weight_format in REAL_DTYPES, "optim.real_dtype",
            cfg.real_dtype, f"real tensors exist for {list(REAL_DTYPES)} only, not "
            f"optim.weight_format={cfg.weight_format}; use optim.real_dtype=false or "
            "optim.weight_format=bf16")


def build_optimizer(model: nn.Module, cfg: OptimConfig, seed: int = 0) -> torch.optim.Optimizer:
    """The configured optimizer; BatchNorm and bias parameters get no weight decay unless
    ``optim.decay_all`` (CPT's code decays every parameter); with ``optim.decay_only`` only
    the parameters under those name prefixes decay (a prefix naming none is a config error).

    With a low-precision ``optim.weight_format`` it is lowp_optim's optimizer (same SGD /
    AdamW math), which also puts the weights into that format (``seed`` keys its stochastic
    rounding).
    """
    from cprec.numerics.weight_formats import parse_weight_format

    fmt = parse_weight_format(cfg.weight_format)
    if cfg.real_dtype:
        from cprec.numerics.lowp_optim import store_weights_in

        store_weights_in(model, cfg.weight_format)
    decay, no_decay = [], []
    prefixes = _decay_prefixes(model, cfg)
    for name, p in model.named_parameters():
        decays = (p.dim() > 1 or cfg.decay_all) and _under(name, prefixes)
        (decay if decays else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if fmt.is_fp32:
        return OPTIMIZERS[cfg.name](groups, cfg)
    from cprec.numerics.lowp_optim import LowPrecisionOptimizer

    return LowPrecisionOptimizer(groups, cfg, fmt, seed)


def _decay_prefixes(model: nn.Module, cfg: OptimConfig) -> tuple[str, ...] | None:
    """``optim.decay_only`` as a tuple; a prefix that names no parameter is a config error."""
    if cfg.decay_only is None:
        return None
    names = [n for n, _ in model.named_parameters()]
    for prefix in cfg.decay_only:
        require(any(_under(n, (prefix,)) for n in names), "optim.decay_only", cfg.decay_only,
                f"no parameter is named {prefix} or {prefix}.*; the model's top-level modules: "
                f"{sorted({n.split('.')[0] for n in names})}")
    return tuple(cfg.decay_only)


def _under(name: str, prefixes: tuple[str, ...] | None) -> bool:
    """``name`` is one of ``prefixes`` or inside one of them (None: every name is)."""
    return prefixes is None or any(name == p or name.startswith(p + ".") for p in prefixes)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig, start: int = 0) -> float:
    """Multiplier of the base lr at ``step``: warm-up (linear, or constant at
    ``optim.warmup_lr``), then the configured schedule.

    ``start`` steps (a deficit probe's low-precision prefix) run at the base lr and the
    schedule then runs over the remaining ``total_steps - start`` steps, so its milestones
    move after them (the Better Schedules probe's ``piecewise-no-def-decay``).
    """
    if step < cfg.warmup_steps:
        if cfg.warmup_lr is not None:
            return cfg.warmup_lr / cfg.lr
        return (step + 1) / cfg.warmup_steps
    if step < start:
        return 1.0
    return LR_SCHEDULES[cfg.lr_schedule](step - start, total_steps - start, cfg)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig,
                       start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step lr multipliers of ``lr_factor`` (``start``: steps before the schedule starts)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg, start))
