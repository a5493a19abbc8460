"""Quantized Conv2d/Linear layers and the one setter that gives them their precision.

The layers are plain subclasses of ``nn.Conv2d`` / ``nn.Linear`` sharing the original
parameters, so optimizers, state dicts and torchvision models keep working. Precision is
set from outside (``set_precision``), never passed through ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from cprec.quant.fixed import RoundError, quantize_error
from cprec.quant.int8_layers import int8_forward, uses_int8
from cprec.quant.quantizers import FULL, FixedPointQuantizer, Quantizer


class QuantRNG:
    """Keys for stochastic rounding: a seeded counter, so the noise stream is reproducible,
    resumable (two integers of state) and generated on the tensor's own device."""

    def __init__(self, seed: int) -> None:
        self.seed, self.counter = seed, 0

    def next_key(self, device: torch.device) -> torch.Tensor:
        self.counter += 1
        h = (self.seed * 0x9E3779B97F4A7C15 + self.counter * 0xBF58476D1CE4E5B9) % (1 << 64)
        h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) % (1 << 64)
        k = (h >> 32) - (1 << 32) * ((h >> 63) & 1)  # top 32 bits as a signed int32
        return torch.tensor(k, dtype=torch.int32, device=device)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.counter = state["seed"], state["counter"]


class QuantMixin:
    """Shared state and forward logic of the quantized layers: the precision of the coming
    step(s), the activation-range EMA, and calls into the model's ``Quantizer``."""

    fw_bits: int
    bw_bits: int

    def _init_quant(self, quantizer: Quantizer, rng: QuantRNG) -> None:
        self.quantizer, self.rng = quantizer, rng
        self.fw_bits, self.bw_bits = FULL, FULL
        # loss scaling (cprec/numerics/loss_scale.py): called as tap(round_error, error, bits, key)
        # in place of round_error(error, bits, key) when set
        self.error_tap = None
        device = self.weight.device  # a model converted after .to(device) keeps working
        self.register_buffer("act_lo", torch.zeros((), device=device))
        self.register_buffer("act_hi", torch.zeros((), device=device))
        self.act_seen = False  # python flag: no device sync in forward

    def track_range(self, lo: torch.Tensor, hi: torch.Tensor, momentum: float) -> None:
        """Fold a training batch's activation range into the EMA used at eval (the first
        batch initializes it)."""
        with torch.no_grad():
            ema_weight = 1.0 - momentum if self.act_seen else 1.0
            self.act_lo.lerp_(lo, ema_weight)
            self.act_hi.lerp_(hi, ema_weight)
            self.act_seen = True

    def get_extra_state(self) -> dict:
        return {"act_seen": self.act_seen}

    def set_extra_state(self, state: dict) -> None:
        self.act_seen = bool(state["act_seen"])

    def _quantized_inputs(self, x: torch.Tensor, weight: torch.Tensor,
                          ste: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """x and weight at this step's forward precision: with ``ste`` connected to autograd
        by the straight-through estimator, else as plain tensors."""
        if self.fw_bits >= FULL:
            return (x, weight) if ste else (x.detach(), weight.detach())
        return self.quantizer.inputs(self, x, weight, ste)

    def _error_rounding(self) -> tuple[int, RoundError] | None:
        """``(bits, round_error)`` for this step's errors, or None when they stay as they are."""
        rounding = self.quantizer.error_rounding(self.bw_bits)
        if rounding is None or self.error_tap is None:
            return rounding
        return rounding[0], partial(self.error_tap, rounding[1])

    def _quantized_output(self, out: torch.Tensor) -> torch.Tensor:
        rounding = self._error_rounding()
        if rounding is None:
            return out
        return quantize_error(out, rounding[0], self.rng.next_key, rounding[1])


class _QuantizedConv2d(torch.autograd.Function):
    """A quantized Conv2d training step as one autograd node.

    Forward: conv(x_q, w_q, bias). Backward: the error is rounded (``rounding`` = (bits,
    round_error), None = kept) and handed to the convolution's own backward, exactly as
    autograd would call it; its input and weight gradients go to x and w unchanged (the
    straight-through estimator). One Python node instead of three per layer (STE, conv,
    error hook): on a CPU every node visited with cold caches costs ~0.1 ms.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, xq, wq, layer, rounding):
        ctx.save_for_backward(xq, wq)
        ctx.layer, ctx.rounding = layer, rounding
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return F.conv2d(xq, wq, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad):
        xq, wq = ctx.saved_tensors
        layer = ctx.layer
        if ctx.rounding is not None:
            bits, round_error = ctx.rounding
            grad = round_error(grad.contiguous(), bits, layer.rng.next_key(grad.device))
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, xq, wq, ctx.bias_sizes, layer.stride, layer.padding, layer.dilation, False,
            [0, 0], layer.groups, list(ctx.needs_input_grad[:3]))
        return gx, gw, gb, None, None, None, None


class QConv2d(QuantMixin, nn.Conv2d):
    """nn.Conv2d with quantized inputs and errors; a training step is one autograd node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fw_bits < FULL and self.quantizer.per_gemm:
            return self.quantizer.conv2d(self, x)
        if uses_int8(self) and (out := int8_forward(self, x)) is not None:
            return out
        rounding = self._error_rounding()
        if (self.fw_bits >= FULL and rounding is None) or not self._one_node_ok(x):
            x, w = self._quantized_inputs(x, self.weight)
            return self._quantized_output(self._conv_forward(x, w, self.bias))
        xq, wq = self._quantized_inputs(x, self.weight, ste=False)
        return _QuantizedConv2d.apply(x, self.weight, self.bias, xq, wq, self, rounding)

    def _one_node_ok(self, x: torch.Tensor) -> bool:
        """_QuantizedConv2d covers training steps of zero-padded convs with int padding whose
        quantizer routes no gradient of its own (a learned precision's does: cprec/precision/ldp.py)."""
        return (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and getattr(self.quantizer, "one_node", True))


class QLinear(QuantMixin, nn.Linear):
    """nn.Linear with quantized inputs (STE) and errors (a hook on its output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fw_bits < FULL and self.quantizer.per_gemm:
            return self.quantizer.linear(self, x)
        if uses_int8(self) and (out := int8_forward(self, x)) is not None:
            return out
        x, w = self._quantized_inputs(x, self.weight)
        return self._quantized_output(F.linear(x, w, self.bias))


QUANTIZED = {nn.Conv2d: QConv2d, nn.Linear: QLinear}


def _swap(module: nn.Module, quantizer: Quantizer, rng: QuantRNG) -> nn.Module:
    """Turn a Conv2d/Linear into its quantized class in place, sharing its parameters."""
    module.__class__ = QUANTIZED[type(module)]
    module._init_quant(quantizer, rng)
    return module


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    """The quantized layers of a model, by qualified name, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin)}


def compute_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d/Linear (quantized or not): the layers that cost MACs."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def quantize_model(model: nn.Module, quantizer: Quantizer | None = None, rng: QuantRNG | None = None,
                   quantize_first: bool = True, quantize_last: bool = False,
                   keep_full: Sequence[str] = ()) -> nn.Module:
    """Swap the model's Conv2d/Linear layers for quantized ones (BatchNorm stays as it is),
    all sharing ``quantizer`` (default: fixed point) and ``rng`` (default: seed 0).

    The first and last compute layers (in registration order) are kept in full precision
    unless ``quantize_first`` / ``quantize_last`` say otherwise, and so is every layer whose
    qualified name matches a ``keep_full`` pattern (fnmatch). Works on any nn.Module,
    torchvision models included; the model is changed in place and returned.
    """
    quantizer = FixedPointQuantizer() if quantizer is None else quantizer
    rng = QuantRNG(0) if rng is None else rng
    names = [n for n, m in compute_layers(model).items() if type(m) in QUANTIZED]
    keep = set()
    if names and not quantize_first:
        keep.add(names[0])
    if names and not quantize_last:
        keep.add(names[-1])
    keep.update(n for n in names if any(fnmatchcase(n, p) for p in keep_full))
    modules = dict(model.named_modules())
    for index, name in enumerate(n for n in names if n not in keep):
        quantizer.attach(_swap(modules[name], quantizer, rng), name, index)
    return model


def set_precision(model: nn.Module, fw_bits: int, bw_bits: int,
                  per_layer: dict[str, tuple[int, int]] | None = None) -> None:
    """Give every quantized layer its forward and backward bits for the coming step(s)."""
    for name, layer in quant_layers(model).items():
        layer.fw_bits, layer.bw_bits = (per_layer or {}).get(name, (fw_bits, bw_bits))


def layer_bits(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Current (forward, backward) bits of every compute layer; full-precision ones are 32/32."""
    return {n: ((m.fw_bits, m.bw_bits) if isinstance(m, QuantMixin) else (FULL, FULL))
            for n, m in compute_layers(model).items()}
