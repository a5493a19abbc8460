"""The fixed-point quantization kernels as plain torch ops: the reference math.

These functions define what a correct result is. Faster versions (C on CPU, torch.compile
on GPU) are registered against them in backends.py and must return bitwise the same
tensors; callers go through ``backends.kernel(fn)``, which picks one.

Each kernel is one range pass and one rounding pass over the tensor. Stochastic rounding
draws its noise from a counter-based hash of (key, element index) computed inside the
kernel: no random tensor is materialized, the stream is reproducible from an integer key,
and it is the same on every device.
"""

from __future__ import annotations

import torch

EPS = 1e-12
Tensors = tuple[torch.Tensor, ...]


def uniform_from_hash(index: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """U[0, 1) with 24 random bits from a murmur-style 32-bit mix of (index + key)."""
    h = (index + key) * 0x2C9277B5
    h = h ^ ((h >> 15) & 0x1FFFF)  # logical shift on int32
    h = h * 0x5BD1E995
    return ((h >> 8) & 0xFFFFFF).to(torch.float32) * (1.0 / 16777216)


def grid(lo: torch.Tensor, hi: torch.Tensor, levels: torch.Tensor,
         zero_exact: bool = True) -> Tensors:
    """Scale and offset of the round-to-nearest grid for the range [lo, hi].

    ``zero_exact``: the grid spans [min(lo, 0), max(hi, 0)] and is shifted so that 0 is one
    of its points; the offset is the integer zero point (the code of 0). Otherwise CPT's
    grid: lo + k * (hi - lo) / levels, k = 0..levels, from the minimum exactly to the maximum
    (to float rounding); the offset is lo.
    """
    if not zero_exact:
        return torch.clamp_min((hi - lo) / levels, EPS), lo
    lo, hi = torch.clamp_max(lo, 0.0), torch.clamp_min(hi, 0.0)
    scale = torch.clamp_min((hi - lo) / levels, EPS)
    return scale, torch.round(-lo / scale)


def round_nearest(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                  levels: torch.Tensor, zero_exact: bool = True) -> torch.Tensor:
    """x rounded to the nearest of the grid's codes 0..levels, returned as values (the
    grid's scale and offset as ``grid`` gives them)."""
    if not zero_exact:  # CPT's order of operations: shift, scale, clamp, round, back
        q = torch.round(torch.minimum(torch.clamp_min((x - offset) / scale, 0.0), levels))
        return q * scale + offset
    q = torch.minimum(torch.clamp_min(torch.round(x / scale) + offset, 0.0), levels)
    return (q - offset) * scale


# Each kernel also returns its grid's scale (and offset): callers drop them, but as graph
# outputs inductor computes them once into a buffer; otherwise it inlines their scalar math
# (divisions included) into every vector step of the elementwise loop, which costs ~25% of
# the kernel's time on CPU. The results are bitwise the same. ``zero_exact`` picks the grid
# (``grid``); a Python bool, so each setting is its own compiled kernel.
def quant_tensor_batch_range(x: torch.Tensor, levels: torch.Tensor,
                             zero_exact: bool = True) -> Tensors:
    """Round x to nearest on the grid of its own min..max: (q, min, max, scale, offset)."""
    lo, hi = torch.aminmax(x)
    scale, offset = grid(lo, hi, levels, zero_exact)
    return round_nearest(x, scale, offset, levels, zero_exact), lo, hi, scale, offset


def quant_tensor_given_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                             levels: torch.Tensor, zero_exact: bool = True) -> Tensors:
    """Round x to nearest on the grid of the range [lo, hi] (e.g. an EMA at eval):
    (q, scale, offset)."""
    scale, offset = grid(lo, hi, levels, zero_exact)
    return round_nearest(x, scale, offset, levels, zero_exact), scale, offset


def quant_per_channel(w: torch.Tensor, levels: torch.Tensor, zero_exact: bool = True) -> Tensors:
    """Round each output channel (dim 0) to nearest on the grid of its own min..max:
    (q, scale, offset)."""
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    shape = [-1] + [1] * (w.dim() - 1)
    scale, offset = grid(lo.view(shape), hi.view(shape), levels, zero_exact)
    return round_nearest(w, scale, offset, levels, zero_exact), scale, offset


def quant_inputs_batch_range(x: torch.Tensor, w: torch.Tensor, levels: torch.Tensor,
                             zero_exact: bool = True) -> Tensors:
    """A layer's two inputs in one call: x as ``quant_tensor_batch_range``, then w as
    ``quant_per_channel``. One fast call per layer instead of two: on CPU each call has a
    fixed cost (~0.1 ms in a training step) larger than quantizing a small weight."""
    return (quant_tensor_batch_range(x, levels, zero_exact)
            + quant_per_channel(w, levels, zero_exact))


def quant_inputs_given_range(x: torch.Tensor, w: torch.Tensor, lo: torch.Tensor,
                             hi: torch.Tensor, levels: torch.Tensor,
                             zero_exact: bool = True) -> Tensors:
    """``quant_tensor_given_range`` of x, then ``quant_per_channel`` of w, in one call."""
    return (quant_tensor_given_range(x, lo, hi, levels, zero_exact)
            + quant_per_channel(w, levels, zero_exact))


def quant_stochastic(g: torch.Tensor, key: torch.Tensor, levels: torch.Tensor) -> Tensors:
    """Stochastically round g onto min + k * step, k in 0..levels: E[result] = g (to 2^-24 step).

    Returns (q, scale). No lower clamp is needed: g - min >= 0 and the noise is >= 0.
    """
    lo, hi = torch.aminmax(g)
    scale = torch.clamp_min((hi - lo) / levels, EPS)
    index = torch.arange(g.numel(), device=g.device, dtype=torch.int32).view(g.shape)
    noise = uniform_from_hash(index, key)
    q = torch.minimum(torch.floor((g - lo) / scale + noise), levels)
    return q * scale + lo, scale
