"""Model registry: names map to builders taking the model config and the dataset's shape."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from cprec.config import ModelConfig
from cprec.errors import ConfigError
from cprec.models.gnn import GRAPH_MODELS
from cprec.models.lstm import lstm
from cprec.models.mobilenetv2 import cpt_mobilenetv2, mobilenetv2
from cprec.models.resnet import cifar_resnet
from cprec.models.small import lenet, mlp
from cprec.models.transformer_lm import transformer_lm
from cprec.models.tv import torchvision_model
from cprec.tasks.base import DatasetInfo

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
    **GRAPH_MODELS,  # node classification on dataset=cora|citeseer: forward(x, graph)
}

LANGUAGE_MODELS = ("lstm", "transformer_lm")  # token ids in, (logits, state) out


def check_model_fits(model: str, dataset: str) -> None:
    """A registered model name that fits the dataset's kind: a language model goes with a
    corpus, a graph model with a graph dataset, and only there (one-line ConfigError, before
    any data is loaded)."""
    from cprec.tasks.corpora import CORPORA
    from cprec.tasks.families import GRAPH_DATASETS

    if model not in MODELS:
        raise ConfigError("model.name", model, f"choose one of {sorted(MODELS)}")
    if (model in LANGUAGE_MODELS) != (dataset in CORPORA):
        raise ConfigError("model.name", model, f"dataset={dataset} needs " + (
            f"one of {list(LANGUAGE_MODELS)} (e.g. model=lstm; experiment=shakespeare_lstm is a "
            f"ready CPU-sized recipe)" if dataset in CORPORA else
            f"an image model ({model} is a language model, for {list(CORPORA)}); use e.g. "
            f"model=resnet20, or a corpus: dataset=tiny_shakespeare"))
    if dataset in GRAPH_DATASETS and model not in GRAPH_MODELS:
        raise ConfigError("model.name", model, f"dataset={dataset} takes a graph model: "
                          f"choose one of {sorted(GRAPH_MODELS)}")
    if model in GRAPH_MODELS and dataset not in GRAPH_DATASETS:
        raise ConfigError("model.name", model, f"a graph model needs a graph dataset: "
                          f"dataset={' or '.join(GRAPH_DATASETS)}, not {dataset}")


def build_model(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """Build a registered model for a dataset's channels, image size and classes."""
    check_model_fits(cfg.name, info.name)
    return MODELS[cfg.name](cfg, info)
