"""One rank of a data-parallel run: its shard of every batch, gradients summed by
DistributedDataParallel, metrics reduced over the group, rank 0 the only writer.

Exactly-once accounting (docs/runs/data-parallel.md):
- every rank walks the same seeded global order and takes its slice of each global batch
  (``ShardableTask.shard``: in-memory images, ImageFolder through the rank's own loader
  workers, a language model's token streams), so the global batch and the data order equal
  one process's;
- each rank's loss is weighted by its share of the global batch and DDP sums the
  gradients, so the update is the global batch's and every error has its one-process
  magnitude (what a simulated float format underflows or overflows);
- the ledger counts the global batch (``batch_samples``) on every rank, so the ledgers agree
  and equal one process's for the same global batch, steps and bits;
- what must be one value is agreed: training-window metrics and the evaluation (each rank
  scores a slice) are summed, a dynamic loss scale's overflow verdict and the learned
  precisions' gradient are all-reduced (``collectives``), stop requests and divergence
  are agreed at the same step, so every rank takes the same branch;
- stochastic-rounding keys are seeded with ``seed + (rank << 32)`` and the global generators
  (dropout) from (seed, rank): rank 0 draws what one process draws, every other rank an
  independent, reproducible stream;
- the checkpoint holds rank 0's state plus every rank's random state, rounding-key counter,
  window, data position (an LM's hidden state) and step plugins' state (``ranks``), so
  resume with the same N is exact.
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
from cprec.engine.collectives import group_sum, sum_gradients
from cprec.engine.step import StepPlugin
from cprec.engine.threads import ThreadClaim, ThreadShare
from cprec.engine.trainer import Trainer
from cprec.errors import CprecError
from cprec.rng import rng_state, seed_rank, set_rng_state
from cprec.tasks.base import ShardableTask


class DataParallelPlugin(StepPlugin):
    """Weights a rank's loss by its share of the global batch (local / global samples);
    DDP sums the ranks' gradients (``collectives.sum_gradients``), so the gradient is the
    global batch's mean and every error has its one-process magnitude. Adds ``world_size``
    to summary.json."""

    name = "data_parallel"

    def __init__(self, task: ShardableTask, sync_bn: bool) -> None:
        self.task, self.sync_bn = task, sync_bn

    def loss(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        local, total = self.task.batch_share()
        return loss * (local / total)

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
        return int(group_sum([float(local)], dist.ReduceOp.MAX)[0])

    def _own_state(self) -> dict:
        """What differs between ranks (random state, data position, an LM's hidden state,
        window sums, error counts), and what must not (learned p, the loss scale: kept per
        rank so a test can check that the ranks agree)."""
        p = self.parts
        return {"rng": rng_state(), "qrng": p.qrng.state_dict(), "window": self.window.state_dict(),
                "stream": p.task.state_dict(), "plugins": self.train_step.state_dict(),
                "precision": p.precision.state_dict()}

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
        self.train_step.load_state_dict(own["plugins"])

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
    from cprec.engine.build import build_run

    with ThreadClaim(cfg.trainer.threads) as claim:  # a rank's threads are fixed; others see them
        return _train_rank(cfg, build_run(cfg), out_dir, rank, world, device_id, claim)


def _train_rank(cfg: Any, parts: RunParts, out_dir: Path, rank: int, world: int,
                device_id: int | None, claim: ThreadClaim) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from cprec.engine.trainer import step_plugins

    task = parts.task
    if not isinstance(task, ShardableTask):  # validate.check_data_parallel refuses it first
        raise CprecError(f"trainer.devices={world} is invalid: dataset={cfg.dataset.name} "
                         f"trains in one process; use trainer.devices=1")
    if task.batch_size < world:
        raise CprecError(f"trainer.devices={world} is invalid: the batch has {task.batch_size} "
                         f"sample(s), fewer than the processes; use trainer.devices<={task.batch_size}")
    tail = task.n_train % task.batch_size
    if not cfg.trainer.drop_last and 0 < tail < world:
        raise CprecError(f"trainer.drop_last=false is invalid here: the epoch's last batch of {tail} "
                         f"sample(s) cannot be split over trainer.devices={world} processes")
    task.shard(rank, world)
    parts.qrng.seed = cfg.seed + (rank << 32)  # independent, reproducible rounding noise per rank
    seed_rank(cfg.seed, rank)  # and dropout masks
    if cfg.trainer.sync_bn:
        parts.model = nn.SyncBatchNorm.convert_sync_batchnorm(parts.model)
    ddp = DistributedDataParallel(parts.model, device_ids=None if device_id is None else [device_id])
    sum_gradients(ddp)
    plugins = [*step_plugins(parts), DataParallelPlugin(task, cfg.trainer.sync_bn), ThreadShare(claim)]
    trainer = DistributedTrainer(parts, out_dir, ddp, rank, world, plugins)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    return summary
