"""Cut a tensor into scaling groups, each a slice along one dimension of a view, and put
it back.

Every scaled format computes one scale per group and rounds the group's elements with it,
so the numerics (scales.py) see only a tensor and the dimension its groups run along; this
module is the one place that knows how groups lie in the tensor:

- ``tensor``: one group, the whole tensor.
- ``row`` / ``channel``: one group per slice along ``axis`` (the GEMM's reduction axis):
  a scale for every index of the other dimensions (torchao's rowwise "axiswise_dim").
- ``block``: ``block_size`` consecutive elements along ``axis`` (OCP MX: 32, NVFP4: 16).
- ``tile`` (rows, cols): 2-D tiles of the matrix whose columns run along ``axis`` and whose
  rows are all other dimensions flattened in order; ``cols`` counts along ``axis``
  (DeepSeek-V3: 1x128 activation tiles, 128x128 weight blocks).

A block or tile that does not fill (an axis of 27 with blocks of 32) is padded with zeros
inside the group, then cropped: zeros never raise a group's amax and lie on every grid, so
the padded elements change nothing else.

Rows, and blocks that tile the axis exactly (or an axis no longer than one block), are
views of a contiguous tensor, whatever the axis: the group runs along dimension ``dim`` of
``x.unflatten(axis, (L / k, k))``, so nothing is copied and the result keeps x's layout
(an NCHW activation blocked along C stays NCHW). Padded blocks and 2-D tiles are gathered
into a ``(groups, group_size)`` matrix once and scattered back once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Restore = Callable[[torch.Tensor], torch.Tensor]


def to_groups(x: torch.Tensor, granularity: str, axis: int, block_size: int = 32,
              tile: tuple[int, int] | None = None) -> tuple[torch.Tensor, Restore, int]:
    """``(groups, restore, dim)``: every slice of ``groups`` along ``dim`` is one scaling
    group, and ``restore(g)`` turns a tensor shaped like ``groups`` back into ``x``'s shape."""
    if granularity == "tensor":
        return x.reshape(1, -1), lambda g: g.reshape(x.shape), -1
    if granularity == "tile" and tile is not None and tile[0] == 1:  # 1 x k: blocks of k
        granularity, block_size = "block", tile[1]
    axis = axis % x.dim()
    length = x.shape[axis]
    x = x.contiguous()
    if granularity in ("row", "channel") or (granularity == "block" and length <= block_size):
        return x, lambda g: g, axis  # an axis within one block: the zero-padded block is the row
    if granularity == "block" and length % block_size == 0:
        blocks = x.unflatten(axis, (length // block_size, block_size))
        return blocks, lambda g: g.flatten(axis, axis + 1), axis + 1
    moved = x.movedim(axis, -1)
    rows = moved.reshape(-1, length)

    def unmove(m: torch.Tensor) -> torch.Tensor:
        return m.reshape(moved.shape).movedim(-1, axis).contiguous()

    if granularity == "block":
        tile = (1, block_size)
    if tile is None:
        raise ValueError(f"unknown granularity {granularity!r}")
    return (*_tiles(rows, tile, unmove), -1)


def _tiles(rows: torch.Tensor, tile: tuple[int, int], unmove: Restore
           ) -> tuple[torch.Tensor, Restore]:
    """Tiles of ``tile[0]`` rows by ``tile[1]`` columns of the 2-D ``rows``, zero-padded."""
    (r, c), (n_rows, length) = tile, rows.shape
    pad_r, pad_c = -n_rows % r, -length % c
    padded = F.pad(rows, (0, pad_c, 0, pad_r)) if pad_r or pad_c else rows
    tr, tc = padded.shape[0] // r, padded.shape[1] // c
    if r == 1:  # blocks along the axis: a plain view
        groups = padded.reshape(tr * tc, c)
    else:
        groups = padded.reshape(tr, r, tc, c).transpose(1, 2).reshape(tr * tc, r * c)

    def restore(g: torch.Tensor) -> torch.Tensor:
        full = g.reshape(tr, tc, r, c).transpose(1, 2).reshape(tr * r, tc * c) if r > 1 \
            else g.reshape(tr, tc * c)
        if pad_r or pad_c:
            full = full[:n_rows, :length]
        return unmove(full)

    return groups, restore
