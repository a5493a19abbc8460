"""Fixed-point fake quantization: asymmetric uniform grids with straight-through gradients.

- Weights: range per output channel, round to nearest.
- Activations: one range per tensor (batch min..max in training, an EMA at eval).
  Weight and activation ranges are widened to include 0, so 0 (ReLU zeros, padding) is
  exact; with the integer zero point every value still lands within half a step.
- Errors (gradients w.r.t. a layer's output): per-tensor min..max grid starting at the
  minimum (CPT's grid), stochastic rounding, exactly unbiased for every element.
Both straight-through estimators are the identity, so quantization adds no backward pass
beyond the error rounding itself. The math lives in kernels.py (one compiled graph each).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cprec.quant.kernels import (
    kernel,
    quant_per_channel,
    quant_stochastic,
    quant_tensor_batch_range,
    quant_tensor_given_range,
)

_levels_cache: dict[tuple[int, str], torch.Tensor] = {}


def levels(bits: int) -> int:
    """Largest integer code at ``bits`` bits (codes are 0..levels)."""
    return (1 << bits) - 1


def levels_tensor(bits: int, device: torch.device) -> torch.Tensor:
    """``levels(bits)`` as a cached 0-dim tensor, so changing bits never recompiles."""
    key = (bits, str(device))
    if key not in _levels_cache:
        _levels_cache[key] = torch.tensor(float(levels(bits)), device=device)
    return _levels_cache[key]


class _StraightThrough(torch.autograd.Function):
    """Forward: ``quantize(x, *args)`` (first output); backward: identity into x."""

    @staticmethod
    def forward(ctx, x, quantize, *args):
        out = quantize(x.detach(), *args)
        return out if isinstance(out, torch.Tensor) else out[0]

    @staticmethod
    def backward(ctx, grad):
        return (grad, None) + (None,) * 8


def _apply_ste(x: torch.Tensor, quantize: Callable, *args) -> torch.Tensor:
    return _StraightThrough.apply(x, quantize, *args)


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel range, round to nearest, straight-through gradient."""
    if bits >= 32:
        return w
    return _apply_ste(w, kernel(quant_per_channel), levels_tensor(bits, w.device))


def quantize_activation(x: torch.Tensor, bits: int, lo: torch.Tensor | None = None,
                        hi: torch.Tensor | None = None):
    """Per-tensor, round to nearest, straight-through.

    Without a range, the batch's own min..max is used and ``(q, lo, hi)`` is returned so the
    caller can track it; with ``lo``/``hi`` (0-dim tensors) just ``q``.
    """
    if lo is None:
        if bits >= 32:
            lo, hi = torch.aminmax(x.detach())
            return x, lo, hi
        q, lo, hi, _, _ = kernel(quant_tensor_batch_range)(x.detach(),
                                                           levels_tensor(bits, x.device))
        return _apply_ste(x, lambda _x, q: q, q), lo, hi
    if bits >= 32:
        return x
    return _apply_ste(x, kernel(quant_tensor_given_range), lo, hi, levels_tensor(bits, x.device))


def stochastic_round_tensor(g: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
    """Per-tensor min..max grid, stochastic rounding: E[q] = g exactly, |q - g| < one step.

    ``key`` (an int32 0-dim tensor) selects the random stream; equal keys give equal noise.
    At 32 bits (full precision) ``g`` is returned unchanged, as by the other quantizers.
    """
    if bits >= 32:
        return g
    return kernel(quant_stochastic)(g, key, levels_tensor(bits, g.device))[0]


def quantize_error(x: torch.Tensor, bits: int, key_source, quantizer=stochastic_round_tensor):
    """Mark ``x`` so that the gradient flowing back into it is quantized at ``bits``.

    ``key_source(device)`` is called once per backward pass to get the rounding key.
    A tensor hook rather than an autograd Function: the layer output stays a plain tensor, so
    a following in-place op (``ReLU(inplace=True)``) is allowed, and the hook still sees the
    gradient w.r.t. the output as it was when the layer produced it.
    """
    if bits >= 32 or not x.requires_grad:
        return x
    x.register_hook(lambda grad: quantizer(grad.contiguous(), bits, key_source(grad.device)))
    return x
