"""What every task is: its batches, loss, evaluation and the shape of its data.

The training loop knows none of a task's details: it asks the task for the next batch,
the loss and the evaluation. Each task family (in-memory images, ImageFolder, token
streams, graphs) implements these classes in its own module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cprec.config import DatasetConfig, TrainConfig


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int
    classes: int


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


@dataclass(frozen=True)
class TaskFamily:
    """How a group of datasets becomes a task: its shape without loading the data (schedule
    previews, run plans), the task itself, and a dummy model input of the right shape.

    ``shape`` gives the training samples n such that ``build.steps_per_epoch(n, batch_size,
    drop_last)`` is the built task's ``steps_per_epoch`` (plan_run counts steps from it);
    ``unit`` names those samples in messages (None: the task trains on all of its data at
    every step, so ``trainer.batch_size`` does not apply).
    """

    shape: Callable[[DatasetConfig], tuple[DatasetInfo, int]]
    build: Callable[[TrainConfig, torch.device, int], Task]
    dummy_input: Callable[[DatasetInfo], Any]
    unit: str | None = "samples"
