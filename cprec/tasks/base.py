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
from cprec.engine.collectives import group_sum


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


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Items [lo, hi) of ``n`` that ``rank`` of ``world`` takes (a batch's samples, a test
    set, token streams): as even as possible, the first ``n % world`` ranks one more
    (``torch.tensor_split``'s rule)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ShardableTask(Task):
    """A task a data-parallel group can split (engine/data_parallel.py): after
    ``shard(rank, world)`` this process trains only its slice of every global batch (the
    global batch and its order stay one process's) and evaluates only its slice of the
    evaluation data. Evaluation sums and window totals are summed over the group
    (engine/collectives.py; the identity in one process), so every rank reports the
    metrics of the whole batch and the whole test set."""

    rank, world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    @abstractmethod
    def batch_share(self) -> tuple[int, int]:
        """(samples this process trained, samples of the global batch) of the last batch."""

    def batch_samples(self, batch: Any) -> int:
        return self.batch_share()[1]  # the ledger counts the global batch, on every rank alike

    @abstractmethod
    def eval_sums(self, model: nn.Module, batch_size: int) -> list[float]:
        """Additive sums (losses, counts) over this process's slice of the evaluation data."""

    @abstractmethod
    def metrics_of(self, sums: list[float]) -> dict[str, float]:
        """Test metrics from the whole group's ``eval_sums``."""

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        return self.metrics_of(group_sum(self.eval_sums(model, batch_size)))


class AccuracyWindow(TrainWindow):
    """Mean loss and accuracy over the samples seen since the last evaluation (of the whole
    data-parallel group: its totals are summed over the ranks)."""

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
        loss, correct, seen = group_sum([float(self.loss_sum), int(self.correct), self.seen])
        return self.record_of(loss, correct, seen)

    def record_of(self, loss_sum: float, correct: float, seen: float) -> dict[str, float]:
        return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1)}

    def finite(self) -> bool:
        return group_sum([0.0 if torch.isfinite(self.loss_sum) else 1.0])[0] == 0  # any rank's NaN

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
