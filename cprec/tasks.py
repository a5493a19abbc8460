"""Tasks: what a batch is, what the loss is and which metrics a run reports.

The training loop knows none of this: it asks the task for the next batch, the loss and
the evaluation. Image classification over in-memory tensors is the task every current
dataset uses; a task with another batch (token windows and a carried hidden state, one
graph with masks) implements the same methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import DatasetConfig, TrainConfig
from cprec.corpora import CORPORA
from cprec.data import (
    DATASETS,
    BatchStream,
    Dataset,
    DatasetInfo,
    build_dataset,
    dataset_shape,
    eval_batches,
)
from cprec.errors import ConfigError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (dropout off, BatchNorm and activation ranges from their
    running statistics) for an evaluation, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class TrainWindow(ABC):
    """Training statistics since the last evaluation, kept on the device (no sync per step)."""

    @abstractmethod
    def add(self, loss: torch.Tensor, out: Any, batch: Any) -> None:
        """Count one step's (detached) loss and outputs."""

    @abstractmethod
    def record(self) -> dict[str, float]:
        """The window's metrics, e.g. ``{"train_loss": ..., "train_acc": ...}``."""

    @abstractmethod
    def finite(self) -> bool:
        """False once a loss in the window was NaN or infinite (the run diverged)."""

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...


class Task(ABC):
    """A training task: batches, loss, evaluation; resumable through ``state_dict``.

    ``metric`` names the headline test metric (``test_<metric>`` in metrics.jsonl,
    ``final_<metric>``/``best_<metric>`` in summary.json); ``higher_is_better`` says which
    way "best" goes.
    """

    metric: str = "acc"
    higher_is_better: bool = True
    info: DatasetInfo
    n_train: int
    steps_per_epoch: int

    @abstractmethod
    def next_batch(self) -> Any: ...

    @abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """(loss, outputs) of one training batch, with the graph for backward."""

    @abstractmethod
    def batch_samples(self, batch: Any) -> int:
        """Samples in a batch: what the cost ledger multiplies MACs per sample by."""

    @abstractmethod
    def new_window(self) -> TrainWindow: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        """Test metrics, at least ``test_loss`` and ``test_<metric>``; not training cost."""

    @abstractmethod
    def sample_input(self) -> Any:
        """The model's input for one sample (a tensor batch of one, or a tuple of the
        forward's arguments), for measuring MACs per sample from real shapes."""

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...


class AccuracyWindow(TrainWindow):
    """Mean loss and accuracy over the samples seen since the last evaluation."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0

    def add(self, loss: torch.Tensor, out: torch.Tensor, batch: tuple) -> None:
        y = batch[1]
        self.loss_sum += loss * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y)

    def record(self) -> dict[str, float]:
        return {"train_loss": float(self.loss_sum) / max(self.seen, 1),
                "train_acc": int(self.correct) / max(self.seen, 1)}

    def finite(self) -> bool:
        return bool(torch.isfinite(self.loss_sum))

    def state_dict(self) -> dict:
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        device = self.loss_sum.device
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.seen = state["seen"]


class ClassificationTask(Task):
    """Images held in memory, cross-entropy, accuracy."""

    def __init__(self, data: Dataset, batch_size: int, seed: int, device: torch.device,
                 drop_last: bool = True) -> None:
        self.data, self.device = data, device
        self.stream = BatchStream(data, batch_size, seed, device, drop_last)
        self.info, self.n_train = data.info, len(data.y_train)
        self.steps_per_epoch = self.stream.steps_per_epoch

    @property
    def batch_size(self) -> int:
        return self.stream.batch_size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stream.next()

    def forward(self, model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out = model(x)
        return F.cross_entropy(out, y), out

    def batch_samples(self, batch: tuple) -> int:
        return len(batch[1])

    def new_window(self) -> AccuracyWindow:
        return AccuracyWindow(self.device)

    @torch.no_grad()
    def score(self, model: nn.Module, batch_size: int, part: slice = slice(None),
              dtype: torch.dtype = torch.float32) -> tuple[float, int]:
        """(summed loss, correct predictions) over test samples ``part``, in eval mode."""
        with eval_mode(model):
            loss_sum, correct = torch.zeros((), device=self.data.x_test.device, dtype=dtype), 0
            for x, y in eval_batches(self.data.x_test[part], self.data.y_test[part], batch_size):
                out = model(x)
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                correct += int((out.argmax(1) == y).sum())
        return float(loss_sum), correct

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        loss_sum, correct = self.score(model, batch_size)
        n = len(self.data.y_test)
        return {"test_loss": loss_sum / n, "test_acc": correct / n}

    def sample_input(self) -> torch.Tensor:
        return self.data.x_train[:1]

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


@dataclass(frozen=True)
class TaskFamily:
    """How a group of datasets becomes a task: its shape without loading the data (schedule
    previews, run plans), the task itself, and a dummy model input of the right shape.

    ``shape`` gives the training samples n such that ``build.steps_per_epoch(n, batch_size,
    drop_last)`` is the built task's ``steps_per_epoch`` (plan_run counts steps from it).
    """

    shape: Callable[[DatasetConfig], tuple[DatasetInfo, int]]
    build: Callable[[TrainConfig, torch.device, int], Task]
    dummy_input: Callable[[DatasetInfo], Any]


def _images() -> TaskFamily:
    def build(cfg: TrainConfig, device: torch.device, batch_size: int) -> Task:
        data = build_dataset(cfg.dataset).to(device)
        return ClassificationTask(data, batch_size, cfg.seed, device, cfg.trainer.drop_last)

    return TaskFamily(dataset_shape, build,
                      lambda info: torch.zeros(1, info.channels, info.size, info.size))


def _language() -> TaskFamily:
    from cprec.lm_task import family  # token windows, carried state, perplexity

    return family()


def _imagefolder() -> TaskFamily:
    from cprec.imagefolder import family

    return family()


def _graphs() -> TaskFamily:
    from cprec.graph import family  # PyTorch Geometric is imported when data loads

    return family()


GRAPH_DATASETS = ("cora", "citeseer")  # cprec/graph.py's PLANETOID

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
