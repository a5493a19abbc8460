"""Model registry: names map to builders taking the model config and the dataset's shape."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cprec.config import ModelConfig
from cprec.data import DatasetInfo
from cprec.errors import ConfigError
from cprec.models.lstm import lstm
from cprec.models.mobilenetv2 import cpt_mobilenetv2, mobilenetv2
from cprec.models.resnet import cifar_resnet
from cprec.models.small import lenet, mlp
from cprec.models.transformer_lm import transformer_lm
from cprec.models.tv import torchvision_model

MODELS: dict[str, Callable[[ModelConfig, DatasetInfo], nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "mobilenetv2": mobilenetv2,
    "cpt_mobilenetv2": cpt_mobilenetv2,
    "lstm": lstm,
    "transformer_lm": transformer_lm,
    "torchvision": torchvision_model,
    **{f"resnet{d}": (lambda c, i, d=d: cifar_resnet(d, c, i))
       for d in (20, 38, 56, 74, 110, 152)},
}

LANGUAGE_MODELS = ("lstm", "transformer_lm")  # token ids in, (logits, state) out


def build_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """Build a registered model for a dataset's channels, image size and classes."""
    if cfg.name not in MODELS:
        raise ConfigError("model.name", cfg.name, f"choose one of {sorted(MODELS)}")
    from cprec.corpora import CORPORA

    if (cfg.name in LANGUAGE_MODELS) != (info.name in CORPORA):
        raise ConfigError("model.name", cfg.name, f"dataset={info.name} needs " + (
            f"one of {list(LANGUAGE_MODELS)}" if info.name in CORPORA else
            f"an image model; {cfg.name} is a language model for {list(CORPORA)}"))
    return MODELS[cfg.name](cfg, info)
