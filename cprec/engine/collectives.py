"""What the ranks of a data-parallel group agree on besides the model's gradients (DDP's):
sums of metrics, one overflow verdict, one gradient of the learned precisions.

Every helper is the identity in a single process (no process group), so the code that
calls them reads the same in both modes and a lone run does exactly what it did.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def in_group() -> bool:
    """True in a rank of a data-parallel group (an initialised default process group)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def group_device() -> torch.device:
    """Where the group's collectives take their tensors: the rank's GPU under NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_sum(values: list[float], op: Any = None) -> list[float]:
    """Element-wise sum (or ``op``, e.g. ReduceOp.MAX) over the group, in float64."""
    if not in_group():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=group_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM if op is None else op)
    return t.tolist()


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A boolean that is true on every rank when it is true on any (an overflow seen by one
    rank skips the step on all of them)."""
    if not in_group():
        return flag
    t = flag.to(group_device(), torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t[0].bool()


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the group, for a gradient DDP does not see (the learned
    precisions' p): each rank's loss is its share of the global batch's mean, so the sum
    of the ranks' gradients is the global batch's."""
    if not in_group():
        return t
    out = t.detach().to(group_device(), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def _sum_hook(state, bucket):  # no annotations: DDP checks them against its own, unresolved
    """One bucket of gradients all-reduced with SUM (torch's allreduce_hook, minus its / N)."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def sum_gradients(ddp: torch.nn.parallel.DistributedDataParallel) -> None:
    """DDP sums the ranks' gradients instead of averaging them. With each rank's loss
    weighted by its share of the global batch (local samples / global samples), every
    error in the backward pass has the magnitude it has in one process, so a simulated
    low-precision format rounds (and underflows, and overflows) the values one process
    rounds; averaging would instead need each rank's loss multiplied by N."""
    ddp.register_comm_hook(None, _sum_hook)
