"""Quantize-dequantize ("fake quantize") of a tensor in a scaled number format.

The element-level operation behind every scaled recipe (MX, NVFP4, FP8 per tensor / row /
tile, delayed scaling), for the layers and for users (``cprec.fake_quantize``): float32 in,
float32 out, the values the low-precision GEMM would see. The definitions live next to the
code that computes them: groups in blocks.py, scales and their rules in scales.py, element
rounding in elements.py (floatfmt's float rounding), delayed amax in delayed.py, the
Hadamard transform in hadamard.py. Each piece is a few whole-tensor torch ops on one view
of the groups (blocks.py): no Python loop over blocks, the same code on CPU and GPU.

Non-finite values: a NaN makes its whole group NaN (its scale is NaN: OCP's E8M0 NaN code;
for NVFP4 and per-tensor fp32 scales the group is the tensor); an inf saturates to the
element's largest value times the scale (inf again when that overflows float32, as it does
for E8M0 scales, and NaN for fp32 and NVFP4 scales, whose scale the inf sets to 0).
Delayed scales come from earlier steps, so there a NaN stays one NaN and an inf saturates
to max_elem / scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cprec.quant.backends import kernel
from cprec.quant.blocks import to_groups
from cprec.quant.delayed import AmaxHistory
from cprec.quant.elements import FIXED, round_element, round_fixed
from cprec.quant.hadamard import RandomHadamard
from cprec.quant.mxblocks import quant_mx_blocks, supported
from cprec.quant.scales import (
    E4M3_MAX,
    e8m0_values,
    fp32_scales,
    quantize_e4m3,
    quantize_e8m0,
    quantize_fp32,
)
from cprec.quant.spec import FORMATS, OperandSpec, preset


@dataclass
class OperandState:
    """What an operand carries from step to step: its delayed-scaling amax history and its
    Hadamard signs (both go into checkpoints through ``state_dict``)."""

    amax: AmaxHistory | None = None
    hadamard: RandomHadamard | None = None

    @classmethod
    def for_spec(cls, spec: OperandSpec, seed: int = 0,
                 device: torch.device | str = "cpu") -> OperandState:
        """The state ``spec`` needs: a history of ``spec.history`` steps and/or the
        Hadamard transform of ``seed``."""
        amax = AmaxHistory(spec.history, spec.element.max_value, device=device) \
            if spec.amax == "delayed" else None
        return cls(amax, RandomHadamard(seed) if spec.hadamard else None)

    def state_dict(self) -> dict[str, Any]:
        return {"amax": None if self.amax is None else self.amax.state_dict(),
                "hadamard": None if self.hadamard is None else self.hadamard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("amax") is not None:
            self.amax.load_state_dict(state["amax"])
        if state.get("hadamard") is not None:
            self.hadamard.load_state_dict(state["hadamard"])


def rounding_key(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """An int32 key for the stochastic-rounding hash stream (reference.uniform_from_hash),
    drawn from ``generator`` (a CPU torch.Generator; None: torch's default one)."""
    key = torch.randint(-(2 ** 31), 2 ** 31 - 1, (), dtype=torch.int32, generator=generator)
    return key.to(device)


def quantize_operand(x: torch.Tensor, spec: OperandSpec, axis: int = -1,
                     generator: torch.Generator | None = None,
                     state: OperandState | None = None, key: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """``x`` quantized as ``spec`` says along ``axis`` (its GEMM's reduction axis) and
    dequantized back to float32, same shape.

    ``rounding="stochastic"`` draws one key from ``generator`` per call (see
    ``rounding_key``), unless ``key`` (an int32 0-dim tensor: the layers' seeded counter)
    is given. ``amax="delayed"`` casts with ``state.amax.scale`` and records this
    tensor's amax in the history (the caller calls ``state.amax.update()`` once per step).
    ``hadamard=True`` transforms ``x`` along ``axis`` (``state.hadamard``, seed 0 if none),
    quantizes, and transforms back: the GEMM of two such operands equals, in exact
    arithmetic, the GEMM of the transformed quantized operands (M M^T = I).
    """
    elem = spec.element
    if (spec.scale == "e8m0" and spec.granularity == "block" and not spec.hadamard
            and spec.rounding == "nearest" and supported(elem, spec.rule)):
        return kernel(quant_mx_blocks)(x.detach().float().contiguous(), axis, spec.block_size,
                                       spec.rule, elem)[0]
    return quantize_with_scales(x, spec, axis, generator, state, key, scales=False)[0]


def quantize_with_scales(x: torch.Tensor, spec: OperandSpec, axis: int = -1,
                         generator: torch.Generator | None = None,
                         state: OperandState | None = None, key: torch.Tensor | None = None,
                         scales: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(result, groups, scale)``: ``quantize_operand``'s result, and for telemetry the
    groups of (the transformed) ``x`` and each group's dequantization factor (the value
    of one element unit: E8M0 X, NVFP4's block scale times the tensor scale, 1 / s of an
    fp32 scale), broadcastable to ``groups``; both None for a plain cast or fixed point,
    and the scale None unless ``scales`` (spares NVFP4 a pass over the tensor)."""
    x = x.detach().float()
    if spec.hadamard:
        rht = state.hadamard if state is not None and state.hadamard is not None \
            else RandomHadamard(0)
        inner = OperandSpec(**{**spec.__dict__, "hadamard": False})
        out, groups, scale = quantize_with_scales(rht.transform(x, axis), inner, axis,
                                                  generator, state, key, scales)
        return rht.inverse(out, axis), groups, scale
    elem = spec.element
    if spec.rounding == "stochastic" and key is None:
        key = rounding_key(generator, x.device)
    elif spec.rounding != "stochastic":
        key = None
    if spec.granularity == "none":
        return round_element(x, elem, key), None, None
    groups, restore, dim = to_groups(x, spec.granularity, axis, spec.block_size, spec.tile)
    if elem.kind == FIXED:
        return restore(round_fixed(groups, elem.bits, key, dim)), None, None
    if spec.scale == "e8m0":
        out, codes = quantize_e8m0(groups, elem, spec.rule, key, dim)
        return restore(out), groups, e8m0_values(codes) if scales else None
    if spec.scale == "e4m3":
        out, block = quantize_e4m3(groups, elem, key, dim)
        if not scales:
            return restore(out), groups, None
        per_tensor = groups.abs().amax() / (E4M3_MAX * elem.max_value)
        return restore(out), groups, block * torch.where(per_tensor == 0, 1.0, per_tensor)
    if spec.amax == "delayed":
        if state is None or state.amax is None:
            raise ValueError("amax='delayed' needs state=OperandState.for_spec(spec)")
        state.amax.record(groups.abs().amax())
        scale = state.amax.scale
    else:
        scale = fp32_scales(groups.abs().amax(dim=dim, keepdim=True), elem, spec.pow2)
    return restore(quantize_fp32(groups, elem, scale, key)), groups, 1.0 / scale if scales else None


def operand_spec(fmt: str | OperandSpec, scale_rule: str = "floor", **spec: Any) -> OperandSpec:
    """The OperandSpec ``fake_quantize`` uses: a ``FORMATS`` name or an element name (then
    the OperandSpec defaults: blocks of 32 with E8M0 scales), with ``spec`` overrides."""
    if isinstance(fmt, OperandSpec):  # its own rule stands unless scale_rule says otherwise
        overrides = {**({"rule": scale_rule} if scale_rule != "floor" else {}), **spec}
        return OperandSpec(**{**fmt.__dict__, **overrides}) if overrides else fmt
    if fmt in FORMATS:
        return preset(fmt, "fmt", rule=scale_rule, **spec)
    return OperandSpec(**{"elem": fmt, "rule": scale_rule, **spec})


def fake_quantize(x: torch.Tensor, fmt: str | OperandSpec, axis: int = -1,
                  scale_rule: str = "floor", *, generator: torch.Generator | None = None,
                  state: OperandState | None = None, **spec: Any) -> torch.Tensor:
    """Quantize-dequantize ``x`` (float32 in, float32 out) in blocks along ``axis``.

    ``fmt``: ``mxfp8_e4m3 mxfp8_e5m2 mxfp6_e2m3 mxfp6_e3m2 mxfp4 mxint8`` (OCP MX v1.0:
    32 elements along ``axis`` share an E8M0 scale X = 2^(floor(log2 amax) -
    emax_elem) under ``scale_rule="floor"``; ``rceil``, ``ceil``, ``even`` as torchao's
    ScaleCalculationMode, scales.py), ``nvfp4`` (E2M1 in blocks of 16, E4M3 block scales
    under a per-tensor fp32 scale amax / (448 * 6), as torchao's ``NVFP4Tensor``),
    ``nvfp4_16x16`` (NVFP4 weights' 16x16 tiles), ``fp8_e4m3_tensor fp8_e5m2_tensor
    fp8_e4m3_row fp8_e5m2_row`` (fp32 scale max_elem / amax per tensor or per row along
    ``axis``, torchao float8), ``fp8_e4m3_1x128 fp8_e4m3_128x128`` (DeepSeek-V3 tiles),
    ``fp8_e4m3_delayed fp8_e5m2_delayed`` (need ``state``), an OperandSpec, or an element
    name. Keyword ``spec`` fields override the preset (e.g. ``block_size=16``,
    ``rounding="stochastic"``); invalid values raise a one-line ConfigError.

    Elements saturate at their largest finite value and round to nearest-even (or
    stochastically with ``generator``), keeping the element's subnormals; a block that does
    not fill is padded with zeros inside the block; NaN and inf as the module says.
    """
    return quantize_operand(x, operand_spec(fmt, scale_rule, **spec), axis, generator, state)
