"""The elementwise quantization kernels: the reference math as torch functions, run fast.

Each kernel is one range pass and one rounding pass over the tensor. On CPU the same math
runs as C (native.py, bitwise the same); on GPUs ``torch.compile`` fuses each function into
one kernel. Either is ~10x faster than the functions run op by op (and than torch's
built-in fake-quant ops); with no compiler, or compilation disabled, they run op by op.

Stochastic rounding draws its noise from a counter-based hash of (key, element index)
computed inside the kernel: no random tensor is materialized, the stream is reproducible
from an integer key, and it is the same on every device.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from cprec.quant import native

log = logging.getLogger(__name__)
# torch.compile's C++ toolchain probe warns about a missing CUDA runtime on CPU-only hosts
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

EPS = 1e-12
_COMPILE = os.environ.get("CPREC_COMPILE", "1") != "0"
_fast: dict[str, Callable] = {}
_failed = False


def set_compile(enabled: bool) -> None:
    """Turn kernel compilation on or off for this process (the ``quant.compile`` key)."""
    global _COMPILE
    _COMPILE = enabled


def _uniform_from_hash(index: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """U[0, 1) with 24 random bits from a murmur-style 32-bit mix of (index + key)."""
    h = (index + key) * 0x2C9277B5
    h = h ^ ((h >> 15) & 0x1FFFF)  # logical shift on int32
    h = h * 0x5BD1E995
    return ((h >> 8) & 0xFFFFFF).to(torch.float32) * (1.0 / 16777216)


def _grid(lo: torch.Tensor, hi: torch.Tensor, levels: torch.Tensor):
    """Scale and integer zero point of a grid spanning [min(lo, 0), max(hi, 0)]."""
    lo, hi = torch.clamp_max(lo, 0.0), torch.clamp_min(hi, 0.0)
    scale = torch.clamp_min((hi - lo) / levels, EPS)
    return scale, torch.round(-lo / scale)


def _round_nearest(x, scale, zero_point, levels):
    q = torch.minimum(torch.clamp_min(torch.round(x / scale) + zero_point, 0.0), levels)
    return (q - zero_point) * scale


# Each kernel also returns its grid's scale (and zero point): callers drop them, but as graph
# outputs inductor computes them once into a buffer; otherwise it inlines their scalar math
# (divisions included) into every vector step of the elementwise loop, which costs ~25% of
# the kernel's time on CPU. The results are bitwise the same.
def quant_tensor_batch_range(x: torch.Tensor, levels: torch.Tensor):
    """Round x to nearest on the grid of its own min..max: (q, min, max, scale, zero point)."""
    lo, hi = torch.aminmax(x)
    scale, zp = _grid(lo, hi, levels)
    return _round_nearest(x, scale, zp, levels), lo, hi, scale, zp


def quant_tensor_given_range(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                             levels: torch.Tensor):
    """Round x to nearest on the grid of the range [lo, hi] (e.g. an EMA at eval):
    (q, scale, zero point)."""
    scale, zp = _grid(lo, hi, levels)
    return _round_nearest(x, scale, zp, levels), scale, zp


def quant_per_channel(w: torch.Tensor, levels: torch.Tensor):
    """Round each output channel (dim 0) to nearest on the grid of its own min..max:
    (q, scale, zero point)."""
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    shape = [-1] + [1] * (w.dim() - 1)
    scale, zp = _grid(lo.view(shape), hi.view(shape), levels)
    return _round_nearest(w, scale, zp, levels), scale, zp


def quant_inputs_batch_range(x: torch.Tensor, w: torch.Tensor, levels: torch.Tensor):
    """A layer's two inputs in one call: x as ``quant_tensor_batch_range``, then w as
    ``quant_per_channel``. One compiled call per layer instead of two: on CPU each call has
    a fixed cost (~0.1 ms in a training step) larger than quantizing a small weight."""
    return quant_tensor_batch_range(x, levels) + quant_per_channel(w, levels)


def quant_inputs_given_range(x: torch.Tensor, w: torch.Tensor, lo: torch.Tensor,
                             hi: torch.Tensor, levels: torch.Tensor):
    """``quant_tensor_given_range`` of x, then ``quant_per_channel`` of w, in one call."""
    return quant_tensor_given_range(x, lo, hi, levels) + quant_per_channel(w, levels)


def quant_stochastic(g: torch.Tensor, key: torch.Tensor, levels: torch.Tensor):
    """Stochastically round g onto min + k * step, k in 0..levels: E[result] = g (to 2^-24 step).

    Returns (q, scale). No lower clamp is needed: g - min >= 0 and the noise is >= 0.
    """
    lo, hi = torch.aminmax(g)
    scale = torch.clamp_min((hi - lo) / levels, EPS)
    index = torch.arange(g.numel(), device=g.device, dtype=torch.int32).view(g.shape)
    noise = _uniform_from_hash(index, key)
    q = torch.minimum(torch.floor((g - lo) / scale + noise), levels)
    return q * scale + lo, scale


def kernel(fn: Callable) -> Callable:
    """``fn`` as fast as this machine runs it, same results.

    With compilation on (the default): contiguous float32 CPU tensors go to the C kernels
    of native.py, everything else (GPUs) to ``torch.compile`` (dynamic shapes). With it
    off, or where neither can be built, ``fn`` runs as plain torch ops.
    """
    if not _COMPILE:
        return fn
    if fn.__name__ not in _fast:
        _fast[fn.__name__] = _dispatcher(fn)
    return _fast[fn.__name__]


def _dispatcher(fn: Callable) -> Callable:
    lib_fn = native.KERNELS.get(fn.__name__)
    compiled = torch.compile(fn, dynamic=True)  # compiles on its first call, if any

    def run(*args: torch.Tensor):
        global _failed
        if lib_fn is not None and native.accepts(*args) and native.library() is not None:
            return lib_fn(*args)
        if _failed:
            return fn(*args)
        try:
            return compiled(*args)
        except Exception as e:  # no compiler, unsupported backend: stay correct, just slower
            result = fn(*args)  # raises again if the inputs are the problem, not compilation
            _failed = True
            log.warning("torch.compile unavailable for quantization kernels (%s: %s); "
                        "running them eagerly", type(e).__name__, str(e).splitlines()[0][:200])
            return result

    return run
