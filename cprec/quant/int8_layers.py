"""Quantized Conv2d/Linear training steps on integer GEMMs (``quant.kernels=int8|auto``).

The same rounding as the simulated layer (the same kernels, the same stochastic-rounding
keys in the same order), then the products on the integer codes (int8.py):

- forward Y = W X: an int8 GEMM. x has one scale, w one per output channel, and the output
  channel is not this GEMM's reduction axis, so both scales come out of the sum.
- weight gradient dW = dY X^T: an int8 GEMM over batch x space (tokens for a Linear),
  chunked so that int32 cannot overflow; errors and x have one scale each.
- input gradient dX = W^T dY: float32 on the rounded values, exactly as simulated. It
  reduces over the output channels, along which the weight's per-channel scales vary, so no
  integer sum with a scale applied afterwards equals it.

Where the integer path cannot take a GEMM it runs simulated, and each GEMM is counted by how
it ran (``gemm_counts``; summary.json ``gemms``): more than 8 bits, CPT's grid
(``quant.zero_exact=false``: 0 has no code, so a padded border has none either), loss
scaling's error tap, grouped or dilated convolutions, unquantized errors.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from cprec.quant.fixed import levels, levels_tensor
from cprec.quant.int8 import (
    Codes,
    forward_product,
    grid_codes,
    im2col_rows,
    linear_forward_product,
    linear_weight_grad_product,
    onednn_conv,
    onednn_int8,
    stochastic_codes,
    to_signed,
    weight_grad_product,
    with_ones_column,
    zero_code,
)
from cprec.quant.quantizers import FULL, FixedPointQuantizer
from cprec.quant.reference import EPS, grid

INT8 = "int8"
AUTO_MIN_MACS = 1 << 24
ONEDNN = onednn_int8()
INPUT_GRAD = "float32: input gradients (per-channel weight scales lie along their reduction)"


def _count(layer: nn.Module, how: str, n: int = 1) -> None:
    layer.__dict__.setdefault("gemm_counts", Counter())[how] += n


def gemm_counts(model: nn.Module) -> dict[str, int]:
    """How the quantized layers' GEMMs ran since the model was built: ``int8`` or the reason
    they did not."""
    total: Counter = Counter()
    for m in model.modules():
        total.update(m.__dict__.get("gemm_counts", {}))
    return dict(sorted(total.items()))


def _why_not(layer: nn.Module, x: torch.Tensor) -> str | None:
    """None when the forward GEMM can run on int8 codes, else why not."""
    q = layer.quantizer
    if layer.fw_bits >= FULL:
        return "float32: full precision"
    if layer.fw_bits > 8:
        return "simulated: more than 8 bits"
    if not q.zero_exact:
        return "simulated: CPT's grid (quant.zero_exact=false) has no code for 0"
    if layer.error_tap is not None:
        return "simulated: loss scaling taps the errors"
    if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or tuple(layer.dilation) != (1, 1)
                                         or layer.padding_mode != "zeros" or isinstance(layer.padding, str)):
        return "simulated: grouped, dilated or non-zero-padded convolution"
    if x.device.type != "cpu":
        return "simulated: integer GEMMs run on the CPU only so far"
    if q.kernels == "auto" and _macs(layer, x) < AUTO_MIN_MACS:
        return "simulated: a small GEMM (auto: below 2^24 MACs the codes' fixed costs win)"
    return None


def _macs(layer: nn.Module, x: torch.Tensor) -> int:
    """The forward GEMM's multiply-accumulates (a conv's with its input's spatial size)."""
    if isinstance(layer, nn.Conv2d):
        return x.numel() // layer.in_channels * layer.weight[0].numel() * layer.out_channels
    return x.numel() * layer.out_features


def uses_int8(layer: nn.Module) -> bool:
    """Whether the layer's quantizer asks for integer GEMMs (fixed point only)."""
    q = getattr(layer, "quantizer", None)
    return type(q) is FixedPointQuantizer and q.kernels != "simulated"


def int8_forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The layer's output through the integer path, or None (counted) for the simulated one."""
    why = _why_not(layer, x)
    if why is not None:
        _count(layer, why, 3 if torch.is_grad_enabled() else 1)
        return None
    bits = layer.fw_bits
    xq, wq, lo, hi = layer.quantizer.inputs_and_range(layer, x, layer.weight, ste=False)
    lv = levels_tensor(bits, x.device)
    sx, zx = grid(lo, hi, lv, True)
    wlo, whi = torch.aminmax(layer.weight.detach().reshape(wq.shape[0], -1), dim=1)
    sw, zw = grid(wlo, whi, lv, True)
    xc = grid_codes(xq, sx, zx, levels(bits), unsigned=isinstance(layer, nn.Conv2d))
    wc = grid_codes(wq.reshape(wq.shape[0], -1), sw.view(-1, 1), zw.view(-1, 1), levels(bits))
    rounding = layer._error_rounding()
    step = _Conv2d if isinstance(layer, nn.Conv2d) else _Linear
    _count(layer, INT8)
    return step.apply(x, layer.weight, layer.bias, xc, wq, wc, layer, rounding)


def _error_codes(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, Codes | str]:
    """The rounded error (as the simulated layer rounds it: same kernel, same key) and its
    codes, or the reason the weight-gradient GEMM stays float."""
    if ctx.rounding is None:
        return grad, "simulated: errors not quantized (full precision or quant.quantize_errors=false)"
    bits, round_error = ctx.rounding
    grad = grad.contiguous()
    gq = round_error(grad, bits, ctx.layer.rng.next_key(grad.device))
    if bits > 8:
        return gq, "simulated: errors at more than 8 bits"
    lo, hi = torch.aminmax(grad)
    scale = torch.clamp_min((hi - lo) / levels_tensor(bits, grad.device), EPS)
    return gq, stochastic_codes(gq, lo, scale, levels(bits))


def _dequantized(x: Codes) -> torch.Tensor:
    return ((x.a.float() + x.offset.float()) * x.scale).float()


def _save(ctx, xc: Codes, wq: torch.Tensor, layer: nn.Module, rounding) -> None:
    ctx.save_for_backward(xc.a, xc.offset, xc.scale, wq)
    ctx.layer, ctx.rounding, ctx.levels = layer, rounding, levels(layer.fw_bits)


class _Conv2d(torch.autograd.Function):
    """A Conv2d step: int8 forward (oneDNN's int8 convolution where it is exact, else a GEMM
    on im2col rows) and weight gradient (a GEMM on im2col rows)."""

    @staticmethod
    def forward(ctx, x, weight, bias, xc, wq, wc, layer, rounding):
        _save(ctx, xc, wq, layer, rounding)
        if ONEDNN:
            y = onednn_conv(xc, wc, weight.shape, layer.stride, layer.padding).contiguous()
        else:
            xs = to_signed(xc, ctx.levels)
            rows = im2col_rows(xs.a, zero_code(xs), weight.shape[2:], layer.stride, layer.padding)
            y = forward_product(rows, wc, xs).contiguous()  # [N * H' * W', O]
            ho = (x.shape[2] + 2 * layer.padding[0] - weight.shape[2]) // layer.stride[0] + 1
            y = y.view(x.shape[0], ho, -1, weight.shape[0]).permute(0, 3, 1, 2).contiguous()
        return y if bias is None else y.add_(bias.view(1, -1, 1, 1))

    @staticmethod
    def backward(ctx, grad):
        a, offset, scale, wq = ctx.saved_tensors
        layer, xc = ctx.layer, Codes(a, offset, scale)
        gq, gc = _error_codes(ctx, grad)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            _count(layer, INPUT_GRAD)
            gx = torch.ops.aten.convolution_backward(
                gq, gq.new_empty(1).expand(a.shape), wq, None, layer.stride, layer.padding,
                layer.dilation, False, [0, 0], 1, (True, False, False))[0]
        if ctx.needs_input_grad[1] and isinstance(gc, str):
            _count(layer, gc)
            gw = torch.nn.grad.conv2d_weight(_dequantized(xc), wq.shape, gq, layer.stride, layer.padding)
        elif ctx.needs_input_grad[1]:
            _count(layer, INT8)
            xs = to_signed(xc, ctx.levels)
            rows = im2col_rows(xs.a, zero_code(xs), wq.shape[2:], layer.stride, layer.padding)
            e_cols = with_ones_column(gc.a.permute(0, 2, 3, 1))
            gw = weight_grad_product(rows, e_cols, xs, gc).t().reshape(wq.shape)
        if ctx.needs_input_grad[2]:
            gb = gq.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None


class _Linear(torch.autograd.Function):
    """A Linear step: int8 forward and weight gradient (over every token)."""

    @staticmethod
    def forward(ctx, x, weight, bias, xc, wq, wc, layer, rounding):
        _save(ctx, xc, wq, layer, rounding)
        x2 = Codes(xc.a.reshape(-1, x.shape[-1]), xc.offset, xc.scale)
        y = linear_forward_product(x2, wc, (*x.shape[:-1], wc.a.shape[0]))
        return y if bias is None else y.add_(bias)

    @staticmethod
    def backward(ctx, grad):
        a, offset, scale, wq = ctx.saved_tensors
        layer = ctx.layer
        gq, gc = _error_codes(ctx, grad)
        g2, x2 = gq.reshape(-1, wq.shape[0]), Codes(a.reshape(-1, wq.shape[1]), offset, scale)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            _count(layer, INPUT_GRAD)
            gx = (g2 @ wq).view(a.shape)
        if ctx.needs_input_grad[1] and isinstance(gc, str):
            _count(layer, gc)
            gw = g2.t() @ _dequantized(x2)
        elif ctx.needs_input_grad[1]:
            _count(layer, INT8)
            gw = linear_weight_grad_product(x2, Codes(gc.a.reshape(-1, wq.shape[0]), gc.offset, gc.scale))
        if ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb, None, None, None, None, None
