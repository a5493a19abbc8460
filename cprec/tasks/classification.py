"""Image classification over in-memory tensors: cross-entropy, accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import TrainConfig
from cprec.tasks.base import AccuracyWindow, ShardableTask, Task, TaskFamily, eval_mode, shard_bounds
from cprec.tasks.vision import BatchStream, Dataset, build_dataset, dataset_shape, eval_batches


class ClassificationTask(ShardableTask):
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

    def shard(self, rank: int, world: int) -> None:
        super().shard(rank, world)
        self.stream.rank, self.stream.world = rank, world

    def batch_share(self) -> tuple[int, int]:
        return self.stream.local_n, self.stream.global_n

    def new_window(self) -> AccuracyWindow:
        return AccuracyWindow(self.device)

    @torch.no_grad()
    def score(self, model: nn.Module, batch_size: int, part: slice = slice(None)) -> tuple[float, int]:
        """(summed loss, correct predictions) over test samples ``part``, in eval mode."""
        with eval_mode(model):
            loss_sum, correct = torch.zeros((), device=self.data.x_test.device, dtype=torch.float32), 0
            for x, y in eval_batches(self.data.x_test[part], self.data.y_test[part], batch_size):
                out = model(x)
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                correct += int((out.argmax(1) == y).sum())
        return float(loss_sum), correct

    def eval_sums(self, model: nn.Module, batch_size: int) -> list[float]:
        lo, hi = shard_bounds(len(self.data.y_test), self.rank, self.world)
        return list(self.score(model, batch_size, slice(lo, hi)))

    def metrics_of(self, sums: list[float]) -> dict[str, float]:
        n = len(self.data.y_test)
        return {"test_loss": sums[0] / n, "test_acc": sums[1] / n}

    def sample_input(self) -> torch.Tensor:
        return self.data.x_train[:1]

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def family() -> TaskFamily:
    def build(cfg: TrainConfig, device: torch.device, batch_size: int) -> Task:
        data = build_dataset(cfg.dataset).to(device)
        return ClassificationTask(data, batch_size, cfg.seed, device, cfg.trainer.drop_last)

    return TaskFamily(dataset_shape, build,
                      lambda info: torch.zeros(1, info.channels, info.size, info.size))
