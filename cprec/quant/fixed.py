"""Fixed-point fake quantization: asymmetric uniform grids with straight-through gradients.

- Weights: range per output channel, round to nearest.
- Activations: one range per tensor (batch min..max in training, an EMA at eval).
  ``zero_exact`` (default, ``quant.zero_exact``): weight and activation ranges are widened to
  include 0 and the grid is shifted to an integer zero point, so 0 (ReLU zeros, padding) is
  exact; every value still lands within half a step. ``zero_exact=False``: CPT's grid, from
  the minimum to the maximum in 2^b - 1 equal steps (0 generally not on it).
- Errors (gradients w.r.t. a layer's output): per-tensor min..max grid starting at the
  minimum (CPT's grid), stochastic rounding, unbiased for every element (to 2^-24 of a step).
Both straight-through estimators are the identity, so quantization adds no backward pass
beyond the error rounding itself. The math lives in reference.py; ``kernel(fn)`` runs
the back end that backends.py picks for it (same results).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from cprec.quant.backends import kernel
from cprec.quant.reference import (
    quant_inputs_batch_range,
    quant_inputs_given_range,
    quant_per_channel,
    quant_stochastic,
    quant_tensor_batch_range,
    quant_tensor_given_range,
)

_levels_cache: dict[tuple[int, str], torch.Tensor] = {}
# error rounding: (error, bits, key) -> rounded error, as stochastic_round_tensor
RoundError = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


def levels(bits: int) -> int:
    """Largest integer code at ``bits`` bits (codes are 0..levels)."""
    return (1 << bits) - 1


def levels_tensor(bits: int, device: torch.device) -> torch.Tensor:
    """``levels(bits)`` as a cached 0-dim tensor, so changing bits never recompiles."""
    key = (bits, str(device))
    if key not in _levels_cache:
        _levels_cache[key] = torch.tensor(float(levels(bits)), device=device)
    return _levels_cache[key]


class StraightThrough(torch.autograd.Function):
    """``apply(x1, .., xn, q1, .., qn)``: forward the already quantized q's, backward the
    identity into the x's (the straight-through estimator). One node for all of a layer's
    quantized inputs; nothing is saved for backward."""

    @staticmethod
    def forward(ctx, *tensors):
        quantized = tensors[len(tensors) // 2:]
        return quantized if len(quantized) > 1 else quantized[0]

    @staticmethod
    def backward(ctx, *grads):
        return grads + (None,) * len(grads)


def quantize_weight(w: torch.Tensor, bits: int, zero_exact: bool = True) -> torch.Tensor:
    """Per-output-channel range, round to nearest, straight-through gradient."""
    if bits >= 32:
        return w
    q = kernel(quant_per_channel)(w.detach(), levels_tensor(bits, w.device), zero_exact)[0]
    return StraightThrough.apply(w, q)


def quantize_activation(x: torch.Tensor, bits: int, lo: torch.Tensor | None = None,
                        hi: torch.Tensor | None = None, zero_exact: bool = True
                        ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor, round to nearest, straight-through.

    Without a range, the batch's own min..max is used and ``(q, lo, hi)`` is returned so the
    caller can track it; with ``lo``/``hi`` (0-dim tensors) just ``q``.
    """
    if bits >= 32:
        return (x, *torch.aminmax(x.detach())) if lo is None else x
    levels = levels_tensor(bits, x.device)
    if lo is None:
        q, lo, hi, _, _ = kernel(quant_tensor_batch_range)(x.detach(), levels, zero_exact)
        return StraightThrough.apply(x, q), lo, hi
    q = kernel(quant_tensor_given_range)(x.detach(), lo, hi, levels, zero_exact)[0]
    return StraightThrough.apply(x, q)


class _RecentBatchInputs:
    """The last few activations quantized on their batch range, for a later layer reading the
    same tensor: its quantization is the same, so it is computed (and kept for backward) once.

    A few entries, not one: a ResNet block's 1x1 shortcut reads the block input after conv2
    (and a MobileNetV2 block's after conv2 and conv3) has quantized its own input; computing
    the shortcut first instead would reorder the backward pass and so the stochastic-rounding
    keys each layer draws. A weak reference and the version counter make sure it is the very
    same x, unmodified (except through ``.data``, which autograd does not see either);
    inference-mode tensors have no version counter and are never shared. Holds the last
    ``size`` results until replaced (tensors a training step keeps for backward anyway)."""

    size = 4
    entries: list[tuple] = []  # newest first: (weak x, x's version, key, result)

    @classmethod
    def get(cls, x: torch.Tensor, key: tuple):
        if x.is_inference():
            return None
        for ref, version, entry_key, result in cls.entries:
            if ref() is x and version == x._version and entry_key == key:
                return result
        return None

    @classmethod
    def put(cls, x: torch.Tensor, key: tuple, result: tuple) -> None:
        if not x.is_inference():
            cls.entries = [(weakref.ref(x), x._version, key, result), *cls.entries][:cls.size]


def share_batch_inputs(entries: int) -> int:
    """Keep the last ``entries`` batch-range input quantizations for sharing (0: share none,
    e.g. to measure what sharing saves; the results are bitwise the same); returns the old
    number."""
    old, _RecentBatchInputs.size, _RecentBatchInputs.entries = _RecentBatchInputs.size, entries, []
    return old


def quantize_inputs(x: torch.Tensor, w: torch.Tensor, bits: int,
                    lo: torch.Tensor | None = None, hi: torch.Tensor | None = None,
                    ste: bool = True, zero_exact: bool = True) -> tuple[torch.Tensor, ...]:
    """A layer's activation and weight at once, as ``quantize_activation`` and
    ``quantize_weight`` would (bitwise the same), in one kernel call and one autograd node.

    Returns ``(x_q, w_q, lo, hi)``: the batch range when none is given, else the given one.
    With ``ste=False`` x_q and w_q are plain tensors outside autograd, for a caller that
    routes the gradients itself.
    """
    if bits >= 32:
        if lo is None:
            lo, hi = torch.aminmax(x.detach())
        return (x, w, lo, hi) if ste else (x.detach(), w.detach(), lo, hi)
    levels = levels_tensor(bits, x.device)
    if lo is None:
        shared = _RecentBatchInputs.get(x, (bits, zero_exact))
        if shared is not None:  # e.g. a ResNet block's conv1 and 1x1 shortcut: one pass
            xq, lo, hi = shared
            wq = kernel(quant_per_channel)(w.detach(), levels, zero_exact)[0]
        else:
            xq, lo, hi, _, _, wq, _, _ = kernel(quant_inputs_batch_range)(
                x.detach(), w.detach(), levels, zero_exact)
            _RecentBatchInputs.put(x, (bits, zero_exact), (xq, lo, hi))
    else:
        xq, _, _, wq, _, _ = kernel(quant_inputs_given_range)(x.detach(), w.detach(), lo, hi,
                                                               levels, zero_exact)
    if ste:
        xq, wq = StraightThrough.apply(x, w, xq, wq)
    return xq, wq, lo, hi


def stochastic_round_tensor(g: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
    """Per-tensor min..max grid, stochastic rounding: E[q] = g (to 2^-24 step), |q - g| < one step.

    ``key`` (an int32 0-dim tensor) selects the random stream; equal keys give equal noise.
    At 32 bits (full precision) ``g`` is returned unchanged, as by the other quantizers.
    """
    if bits >= 32:
        return g
    return kernel(quant_stochastic)(g, key, levels_tensor(bits, g.device))[0]


def quantize_error(x: torch.Tensor, bits: int, key_source: Callable[[torch.device], torch.Tensor],
                   quantizer: RoundError = stochastic_round_tensor) -> torch.Tensor:
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
