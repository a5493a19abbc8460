"""Small models for quick experiments: a LeNet-5-style CNN and an MLP."""

from __future__ import annotations

from torch import nn

from cprec.config import ModelConfig
from cprec.tasks.base import DatasetInfo


def lenet(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """LeNet-5 with 'same' 5x5 convs, so it fits any image size >= 4 (8x8 digits included)."""
    c1, c2 = 6 * cfg.width // 16, 16 * cfg.width // 16
    side = info.size // 4
    return nn.Sequential(
        nn.Conv2d(info.channels, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(c2 * side * side, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, info.classes),
    )


def mlp(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """Two hidden layers of ``model.hidden`` units."""
    d = info.channels * info.size * info.size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d, cfg.hidden), nn.ReLU(inplace=True),
        nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, info.classes),
    )
