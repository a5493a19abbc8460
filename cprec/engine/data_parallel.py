"""One rank of a data-parallel run: its shard of every batch, gradients averaged by
DistributedDataParallel, metrics reduced over the group, rank 0 the only writer.

Exactly-once accounting (README "Data-parallel training"):
- every rank walks the same seeded global permutation and takes its slice of each global
  batch (``shard_bounds``), so the global batch and the data order equal one process's;
- the ledger counts the global batch (``ShardedTask.batch_samples``) on every rank, so the
  ledgers agree and equal one process's for the same global batch and steps;
- training-window metrics and the evaluation (each rank scores a slice of the test set) are
  summed over the group; stop requests and divergence are agreed by all ranks at the same
  step, so every rank takes the same branch and no collective waits forever;
- stochastic-rounding keys are seeded with ``seed + (rank << 32)``: rank 0 draws what one
  process draws, every other rank an independent, reproducible stream;
- the checkpoint holds rank 0's state plus every rank's random state, rounding-key counter,
  window and data position (``ranks``), so resume with the same N is exact.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cprec.engine import runs
from cprec.engine.build import RunParts
from cprec.engine.step import StepPlugin
from cprec.engine.trainer import Trainer
from cprec.errors import CprecError
from cprec.rng import rng_state, set_rng_state
from cprec.tasks.base import AccuracyWindow
from cprec.tasks.classification import ClassificationTask
from cprec.tasks.vision import BatchStream


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Samples [lo, hi) of a batch of ``n`` that ``rank`` trains: as even as possible, the
    first ``n % world`` ranks one more (``torch.tensor_split``'s rule)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class ShardedStream(BatchStream):
    """The global batch stream of one process, of which this rank gathers only its slice."""

    def __init__(self, *args: Any, rank: int, world: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.world, self.global_n, self.local_n = rank, world, 0, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.next_indices()
        lo, hi = shard_bounds(len(idx), self.rank, self.world)
        self.global_n, self.local_n = len(idx), hi - lo
        return self.gather(idx[lo:hi], part=(lo, len(idx)))


def _sum(values: list[float], device: torch.device, op: Any = dist.ReduceOp.SUM) -> list[float]:
    """Element-wise sum (or ``op``) over the group (float64, on the rank's device)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


class ReducedWindow(AccuracyWindow):
    """Training loss and accuracy over the global batches since the last evaluation."""

    def record(self) -> dict[str, float]:
        loss, correct, seen = _sum([float(self.loss_sum), int(self.correct), self.seen],
                                   self.loss_sum.device)
        return {"train_loss": loss / max(seen, 1), "train_acc": correct / max(seen, 1)}

    def finite(self) -> bool:
        return _sum([0.0 if super().finite() else 1.0], self.loss_sum.device)[0] == 0


class ShardedTask(ClassificationTask):
    """Classification over this rank's shard of each global batch and of the test set."""

    def __init__(self, task: ClassificationTask, rank: int, world: int) -> None:
        s = task.stream
        super().__init__(task.data, s.batch_size, 0, task.device, s.drop_last)
        self.stream = ShardedStream(task.data, s.batch_size, 0, task.device, s.drop_last,
                                    rank=rank, world=world)
        self.stream.load_state_dict(s.state_dict())  # the seeded generators, untouched so far
        self.rank, self.world = rank, world

    def batch_samples(self, batch: tuple) -> int:
        return self.stream.global_n  # the ledger counts the global batch, on every rank alike

    def new_window(self) -> ReducedWindow:
        return ReducedWindow(self.device)

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        n = len(self.data.y_test)
        lo, hi = shard_bounds(n, self.rank, self.world)
        loss_sum, correct = self.score(model, batch_size, slice(lo, hi), torch.float64)
        loss, right = _sum([loss_sum, correct], self.device)
        return {"test_loss": loss / n, "test_acc": right / n}


class DataParallelPlugin(StepPlugin):
    """Weights a rank's loss by its share of the global batch when the batch does not split
    evenly (DDP averages over ranks), so the gradient is the global batch's mean; adds
    ``world_size`` to summary.json."""

    name = "data_parallel"

    def __init__(self, task: ShardedTask, sync_bn: bool) -> None:
        self.task, self.sync_bn = task, sync_bn

    def loss(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        s = self.task.stream
        if s.local_n * s.world == s.global_n:
            return loss  # an even split: DDP's mean over ranks is the global mean already
        return loss * (s.local_n * s.world / s.global_n)

    def summary(self) -> dict[str, Any]:
        return {"world_size": self.task.world, "sync_bn": self.sync_bn}


class DistributedTrainer(Trainer):
    """The Trainer of one rank. Ranks other than 0 write into a throwaway scratch dir
    (removed at the end): the run dir gets one metrics file, one summary, one checkpoint."""

    def __init__(self, parts: RunParts, out_dir: Path, ddp: nn.Module, rank: int, world: int,
                 plugins: list[StepPlugin]) -> None:
        self.run_dir, self.rank, self.world = Path(out_dir), rank, world
        self.scratch = None if rank == 0 else Path(tempfile.mkdtemp(prefix=f"cprec-rank{rank}-"))
        super().__init__(parts, self.scratch or self.run_dir, plugins)
        self.train_step.model = ddp  # the forward (and backward's all-reduce) through DDP
        self.device = parts.device

    def open_sinks(self) -> list:
        """Rank 0 logs the run (to TensorBoard, MLflow, W&B); the other ranks log nothing."""
        return super().open_sinks() if self.rank == 0 else []

    def close(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _stop_signal(self, stop: list[int]) -> int:
        """A signal seen by any rank by this step stops every rank after it: the ranks agree
        on one value (a signal arriving after the agreement waits for the next step)."""
        local = super()._stop_signal(stop)
        return int(_sum([float(local)], self.device, dist.ReduceOp.MAX)[0])

    def _own_state(self) -> dict:
        p = self.parts
        return {"rng": rng_state(), "qrng": p.qrng.state_dict(), "window": self.window.state_dict(),
                "stream": p.task.state_dict()}

    def state_dict(self) -> dict:
        state = super().state_dict()
        ranks: list = [None] * self.world
        dist.all_gather_object(ranks, self._own_state())
        return {**state, "ranks": ranks}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("ranks") or []
        if len(ranks) != self.world:
            raise CprecError(f"{self.run_dir} holds a run of {len(ranks) or 1} process(es), not "
                             f"trainer.devices={self.world}; resume it with its own count")
        super().load_state_dict(state)
        own = ranks[self.rank]
        set_rng_state(own["rng"])
        self.parts.qrng.load_state_dict(own["qrng"])
        self.window.load_state_dict(own["window"])
        self.parts.task.load_state_dict(own["stream"])

    def resume(self) -> None:
        """Every rank reads the run dir's checkpoint (rank 0's scratch is the run dir)."""
        own, self.out_dir = self.out_dir, self.run_dir
        try:
            super().resume()
        finally:
            self.out_dir = own

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # a collective: every rank takes part
        if self.rank == 0:
            runs.save_checkpoint(self.run_dir / runs.CHECKPOINT, state)
        self.saved_step = self.loop.step


def train_rank(cfg: Any, out_dir: Path, rank: int, world: int, device_id: int | None) -> dict:
    """Build the run as one process would, shard its task, wrap the model in DDP, train;
    the summary (rank 0's is the run's, the others' went to their scratch dirs)."""
    from torch.nn.parallel import DistributedDataParallel

    from cprec.engine.build import build_run
    from cprec.engine.trainer import step_plugins

    parts = build_run(cfg)
    if not isinstance(parts.task, ClassificationTask):
        raise CprecError(f"trainer.devices={world} is invalid: data-parallel training shards the "
                         f"in-memory image datasets, not dataset={cfg.dataset.name}; use trainer.devices=1")
    tail = parts.task.n_train % parts.task.batch_size
    if not cfg.trainer.drop_last and 0 < tail < world:
        raise CprecError(f"trainer.drop_last=false is invalid here: the epoch's last batch of {tail} "
                         f"sample(s) cannot be split over trainer.devices={world} processes")
    parts.task = ShardedTask(parts.task, rank, world)
    parts.qrng.seed = cfg.seed + (rank << 32)  # independent, reproducible rounding noise per rank
    if cfg.trainer.sync_bn:
        parts.model = nn.SyncBatchNorm.convert_sync_batchnorm(parts.model)
    ddp = DistributedDataParallel(parts.model, device_ids=None if device_id is None else [device_id])
    plugins = [*step_plugins(parts), DataParallelPlugin(parts.task, cfg.trainer.sync_bn)]
    trainer = DistributedTrainer(parts, out_dir, ddp, rank, world, plugins)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    return summary
