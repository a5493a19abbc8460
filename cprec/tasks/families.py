"""Which task family trains each dataset, built on first use (a family may import
optional packages: PyTorch Geometric for graphs)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cprec.config import DatasetConfig, TrainConfig
from cprec.errors import ConfigError
from cprec.tasks.base import DatasetInfo, Task, TaskFamily
from cprec.tasks.corpora import CORPORA
from cprec.tasks.vision import DATASETS


def _images() -> TaskFamily:
    from cprec.tasks.classification import family

    return family()


def _language() -> TaskFamily:
    from cprec.tasks.language import family  # token windows, carried state, perplexity

    return family()


def _imagefolder() -> TaskFamily:
    from cprec.tasks.imagefolder import family

    return family()


def _graphs() -> TaskFamily:
    from cprec.tasks.graph import family  # PyTorch Geometric is imported when data loads

    return family()


GRAPH_DATASETS = ("cora", "citeseer")  # cprec/tasks/graph.py's PLANETOID

# dataset name -> its task family, built on first use (a family may import optional packages)
FAMILIES: dict[str, Callable[[], TaskFamily]] = {
    **{name: _images for name in DATASETS},
    **{name: _language for name in CORPORA},
    "imagefolder": _imagefolder,
    **{name: _graphs for name in GRAPH_DATASETS},
}


def task_family(name: str) -> TaskFamily:
    """The family of dataset ``name``; an unknown name is a one-line config error."""
    if name not in FAMILIES:
        raise ConfigError("dataset.name", name, f"choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]()


def task_shape(cfg: DatasetConfig) -> tuple[DatasetInfo, int]:
    """(shape of one sample and classes, training samples) without loading the data."""
    return task_family(cfg.name).shape(cfg)


def build_task(cfg: TrainConfig, device: torch.device, batch_size: int) -> Task:
    """The task for ``cfg.dataset``, its data loaded onto ``device``."""
    return task_family(cfg.dataset.name).build(cfg, device, batch_size)
