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


def grid(lo: torch.Tensor, hi: torch.Tensor, levels: torch.Tensor) -> Tensors:
    """Scale and integer zero point of a grid spanning [min(lo, 0), max(hi, 0)]."""
    lo, hi = torch.clamp_max(lo, 0.0), torch.clamp_min(hi, 0.0)
    scale = torch.clamp_min((hi - lo) / levels, EPS)
    return scale, torch.round(-lo / scale)


def round_nearest(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  levels: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest of the grid's codes 0..levels, returned as values."""
    q = torch.minimum(torch.clamp_min(torch.round(x / scale) + zero_point, 0.0), levels)
    return (q - zero_point) * scale


# Each kernel also returns its grid's scale (and zero point): callers drop them, but as graph
# outputs inductor computes them once into a buffer; otherwise it inlines their scalar math
# (divisions included) into every vector step of the elementwise loop, which costs ~25% of
# the kernel's time on CPU. The results are bitwise the same.
def quant_tensor_batch_range(x: torch.Tensor, levels: torch.Tensor) -> Tensors:
    """Round x to nearest on the grid of its own min..max: (q, min, max, scale, zero point)."""
    lo, hi = torch.aminmax(x)
    scale, zp = grid(lo, hi, levels)
    return round_nearest(x, scale, zp, levels), lo, hi, scale, zp


def quant_tensor_given_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                             levels: torch.Tensor) -> Tensors:
    """Round x to nearest on the grid of the range [lo, hi] (e.g. an EMA at eval):
    (q, scale, zero point)."""
    scale, zp = grid(lo, hi, levels)
    return round_nearest(x, scale, zp, levels), scale, zp


def quant_per_channel(w: torch.Tensor, levels: torch.Tensor) -> Tensors:
    """Round each output channel (dim 0) to nearest on the grid of its own min..max:
    (q, scale, zero point)."""
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    shape = [-1] + [1] * (w.dim() - 1)
    scale, zp = grid(lo.view(shape), hi.view(shape), levels)
    return round_nearest(w, scale, zp, levels), scale, zp


def quant_inputs_batch_range(x: torch.Tensor, w: torch.Tensor, levels: torch.Tensor) -> Tensors:
    """A layer's two inputs in one call: x as ``quant_tensor_batch_range``, then w as
    ``quant_per_channel``. One fast call per layer instead of two: on CPU each call has a
    fixed cost (~0.1 ms in a training step) larger than quantizing a small weight."""
    return quant_tensor_batch_range(x, levels) + quant_per_channel(w, levels)


def quant_inputs_given_range(x: torch.Tensor, w: torch.Tensor, lo: torch.Tensor,
                             hi: torch.Tensor, levels: torch.Tensor) -> Tensors:
    """``quant_tensor_given_range`` of x, then ``quant_per_channel`` of w, in one call."""
    return quant_tensor_given_range(x, lo, hi, levels) + quant_per_channel(w, levels)


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
