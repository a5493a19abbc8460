"""Optimizers and per-step learning-rate schedules from the ``optim`` config group."""

from __future__ import annotations

import math

import torch
from torch import nn

from cprec.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW; BatchNorm and bias parameters get no weight decay."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at ``step``: linear warm-up, then multistep/cosine/constant."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "multistep":
        return cfg.gamma ** sum(step >= int(m * total_steps) for m in cfg.milestones)
    if cfg.lr_schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / span))
    return 1.0


def build_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                       cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda s: lr_factor(s, total_steps, cfg))
