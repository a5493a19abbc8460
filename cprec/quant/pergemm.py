"""The scaled formats' layer step: each operand of each of the three GEMMs quantized from the
high-precision tensor along that GEMM's own reduction axis (recipe.py, docs "Number formats").

A training step of a Linear or Conv2d layer is one autograd node (``ScaledLinear``,
``ScaledConv2d``) that keeps the high-precision x and W for backward and quantizes:

===========  =====================  =================================================
GEMM         Linear (x: tokens x K)  Conv2d (x: N x C_in x H x W)
===========  =====================  =================================================
forward      W, x along K (in)      W, x along C_in (per kernel tap / pixel)
input_grad   W, dY along N (out)    W, dY along C_out (per input channel and tap / pixel)
weight_grad  dY, x along tokens     dY, x along batch x space (blocks: each image's H*W)
===========  =====================  =================================================

Conv2d blocks run along the channels, not along im2col's K = C_in*kh*kw: a quantized
activation must be one tensor for ``conv2d`` to take it (in im2col form each value appears
in kh*kw patches, which would each need their own quantization), and with channels
innermost (NHWC implicit GEMM, K ordered kh, kw, C_in, as cuDNN and CUTLASS lay it out)
a block of 32 channels *is* a contiguous block of 32 of the GEMM's K. The weight-gradient
GEMM reduces over the output positions; x is blocked along its own positions, which the
kernel tap shifts by at most kh-1 rows: the same quantized x feeds every tap. Its blocks
are consecutive positions of one image (n fixed, h-major): for H*W a multiple of the block
(CIFAR's 32x32, 16x16, 8x8) exactly the blocks of the flattened N*H*W axis, and a free
view of the NCHW tensor; rows (one scale per channel) and 2-D tiles span all N*H*W
positions of a channel. A block that does not fill (16 or 3 channels with blocks of 32,
a last partial block) is padded with zeros inside the block (blocks.py): a documented
choice, not an error. Grouped and
depthwise convs are blocked along the channels as well (across groups). The Hadamard
transform (nvfp4's weight gradient) rotates each operand along its own positions, quantizes
and rotates back (exactly, hadamard.py): for a conv the taps shift x's positions against
dY's, so the rotations are not the GEMM's shared one; each operand is still quantized in a
rotated basis, which is what the transform is for.

Bias gradients (a sum, no GEMM) stay in high precision. A GEMM marked ``high_precision``
takes the unquantized tensors. Nothing is ever quantized twice: each quantization reads
the high-precision tensor.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from cprec.errors import ConfigError, CprecError
from cprec.quant.recipe import LayerRecipe
from cprec.quant.scaled import OperandState, quantize_operand, quantize_with_scales
from cprec.quant.telemetry import OperandTelemetry

HADAMARD_STRIDE = 104_729  # seeds of the layers' Hadamard signs: run seed + stride * (index + 1)


class LayerGemms:
    """One layer's quantization of its six operands: the recipe, each operand's state
    (delayed amax history, Hadamard signs; the two weight-gradient operands share one seed,
    so their transforms cancel) and the telemetry counters."""

    def __init__(self, recipe: LayerRecipe, hadamard_seed: int, telemetry: bool,
                 rungs: dict[tuple[int, int], LayerRecipe] | None = None) -> None:
        self.recipe, self.rungs = recipe, rungs or {}
        self.states = {f"{g}.{r}": OperandState.for_spec(spec, hadamard_seed)
                       for g, r, spec in recipe.operands()
                       if spec.amax == "delayed" or spec.hadamard}
        self.telemetry = OperandTelemetry() if telemetry else None

    def select(self, fw_bits: int, bw_bits: int) -> None:
        """On a ladder of formats: take the recipe of the rungs the layer's bits stand for
        (the states are the same for every rung: a ladder has no delayed-amax rung); bits
        that name no rung are an error, not a silent other format."""
        if not self.rungs:
            return
        if (fw_bits, bw_bits) not in self.rungs:
            pairs = ", ".join(f"{a}/{b}" for a, b in self.rungs)
            raise CprecError(f"bits {fw_bits}/{bw_bits} name no rung of the layer's ladder of "
                             f"formats ({pairs}); set the bits the ladder's schedule gives")
        self.recipe = self.rungs[(fw_bits, bw_bits)]

    def quantize(self, layer: Any, gemm: str, role: str, t: torch.Tensor, axis: int) -> torch.Tensor:
        """``t`` as operand ``role`` of ``gemm`` sees it (``t`` itself when the GEMM is kept
        in high precision). Stochastic rounding draws its key from the layer's seeded
        counter; out of training a delayed history is read, not recorded."""
        spec = self.recipe.operand(gemm, role)
        if spec is None:
            return t.detach()
        name = f"{gemm}.{role}"
        state = self._state(name, t.device, layer.training)
        key = layer.rng.next_key(t.device) if spec.rounding == "stochastic" else None
        if self.telemetry is None or not layer.training:
            return quantize_operand(t, spec, axis, state=state, key=key)
        q, groups, scale = quantize_with_scales(t, spec, axis, state=state, key=key)
        self.telemetry.add(name, t, q, groups, scale, spec.element.max_value)
        return q

    def _state(self, name: str, device: torch.device, training: bool) -> OperandState | None:
        state = self.states.get(name)
        if state is None or state.amax is None:
            return state
        if state.amax.history.device != device:
            state.amax.history = state.amax.history.to(device)
            state.amax.scale = state.amax.scale.to(device)
        if training:
            return state
        frozen = copy.copy(state.amax)  # evaluation reads the scale; the history stays as it was
        frozen.history = state.amax.history.clone()
        return OperandState(frozen, state.hadamard)

    def update_amax(self) -> None:
        """End of a training step: every delayed history rolls and its scale is recomputed."""
        for state in self.states.values():
            if state.amax is not None:
                state.amax.update()

    def check_tiles(self, name: str, weight: torch.Tensor, groups: int = 1) -> None:
        """A 2-D tile longer than the axis it runs along (or, for the weight, taller than
        its other dimensions) cannot apply: ConfigError naming the layer and the sizes."""
        for recipe in self.rungs.values():
            LayerGemms(recipe, 0, False).check_tiles(name, weight, groups)
        w_out, w_in = weight.shape[0], weight.shape[1]
        sizes = {"forward.w": (w_in, weight.numel() // w_in),
                 "input_grad.w": (w_out, weight.numel() // w_out),
                 "forward.x": (w_in * groups, None), "input_grad.dy": (w_out, None)}
        for operand, (along, other) in sizes.items():
            spec = self.recipe.operand(*operand.split("."))
            if spec is None or spec.granularity != "tile":
                continue
            rows, cols = spec.tile
            if cols > along or (other is not None and rows > other):
                size = f"{along}" + ("" if other is None else f" (x {other} rows)")
                raise ConfigError(f"quant.operands.{operand}.tile", f"{rows}x{cols}",
                                  f"layer {name}'s {operand} has {size} along its reduction axis: "
                                  "a tile must fit it; use a smaller tile or granularity=block")

    def state_dict(self) -> dict[str, Any]:
        return {"states": {k: s.state_dict() for k, s in self.states.items()},
                "telemetry": None if self.telemetry is None else self.telemetry.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        for name, s in state["states"].items():
            self.states[name].load_state_dict(s)
            self._state(name, device, True)
        if self.telemetry is not None and state.get("telemetry") is not None:
            self.telemetry.load_state_dict(state["telemetry"], device)


class ScaledLinear(torch.autograd.Function):
    """``apply(x, weight, bias, layer)``: F.linear's step with per-GEMM operands."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        gemms = layer.gemms
        xq = gemms.quantize(layer, "forward", "x", x, -1)
        wq = gemms.quantize(layer, "forward", "w", weight, 1)
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.has_bias = layer, bias is not None
        return F.linear(xq, wq, bias)  # not a view: a following in-place ReLU is allowed

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        layer, gemms = ctx.layer, ctx.layer.gemms
        rows, dy = x.reshape(-1, x.shape[-1]), grad.reshape(-1, weight.shape[0])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = gemms.quantize(layer, "input_grad", "dy", dy, 1) @ \
                gemms.quantize(layer, "input_grad", "w", weight, 0)
            gx = gx.reshape(x.shape)
        if ctx.needs_input_grad[1]:
            gw = gemms.quantize(layer, "weight_grad", "dy", dy, 0).T @ \
                gemms.quantize(layer, "weight_grad", "x", rows, 0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = dy.sum(0)
        return gx, gw, gb, None


def _along_positions(gemms: LayerGemms, layer: Any, role: str, t: torch.Tensor) -> torch.Tensor:
    """An NCHW tensor as the weight-gradient GEMM's operand: blocked along batch x space.
    Blocks (and tensor scales) run along each image's H*W positions, a free view of NCHW;
    rows and 2-D tiles need each channel's N*H*W positions together (one transposed copy)."""
    n, c, h, w = t.shape
    spec = gemms.recipe.operand("weight_grad", role)
    if spec is None or spec.granularity in ("none", "tensor", "block") or \
            spec.granularity == "tile" and spec.tile[0] == 1:
        return gemms.quantize(layer, "weight_grad", role, t.reshape(n * c, h * w), 1).view(t.shape)
    rows = t.transpose(0, 1).reshape(c, n * h * w)
    q = gemms.quantize(layer, "weight_grad", role, rows, 1)
    return q.reshape(c, n, h, w).transpose(0, 1)


class ScaledConv2d(torch.autograd.Function):
    """``apply(x, weight, bias, layer)``: F.conv2d's step with per-GEMM operands (module
    docstring for the axes); the GEMMs are aten's own convolution backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        gemms = layer.gemms
        xq = gemms.quantize(layer, "forward", "x", x, 1)
        wq = gemms.quantize(layer, "forward", "w", weight, 1)
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.bias_sizes = layer, None if bias is None else list(bias.shape)
        return F.conv2d(xq, wq, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        layer, gemms = ctx.layer, ctx.layer.gemms
        grad = grad.contiguous()
        gx = gw = gb = None
        conv = (layer.stride, layer.padding, layer.dilation, False, [0, 0], layer.groups)
        if ctx.needs_input_grad[0]:
            dyq = gemms.quantize(layer, "input_grad", "dy", grad, 1)
            wq = gemms.quantize(layer, "input_grad", "w", weight, 0)
            gx = torch.ops.aten.convolution_backward(dyq, x, wq, None, *conv, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            dyq = _along_positions(gemms, layer, "dy", grad)
            xq = _along_positions(gemms, layer, "x", x)
            gw = torch.ops.aten.convolution_backward(dyq, xq, weight, None, *conv,
                                                     [False, True, False])[1]
        if ctx.bias_sizes is not None and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None
