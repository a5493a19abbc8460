"""Scales of the scaled formats, one per group (a row of ``groups``), and the
quantize-dequantize of each group with its scale.

Three scale formats, each computed from the group's amax = max|v| (NaN if any v is NaN):

``e8m0`` (OCP MX): X = 2^(code - 127), code 0..254, 255 = NaN. The rule picks the code:

- ``floor`` (OCP MX v1.0 section 6.3, torchao FLOOR): X = 2^(floor(log2 amax) - emax_elem).
  floor(log2 amax) is the exponent field of amax's float32 bits (-127 for zero and fp32
  subnormals), so it is exact.
- ``ceil`` (torchao CEIL): the exponent is rounded up when amax's mantissa is not zero.
- ``even`` (torchao EVEN): amax is first rounded half-up to the element's mantissa width
  (adding 2^(22 - M) to its bits and dropping the mantissa), then ``floor``.
- ``rceil`` (torchao RCEIL, NVIDIA's ``cvt.rp.satfinite.ue8m0``): X = 2^ceil(log2(amax /
  max_elem)), computed exactly from the bits of the float32 quotient.

The unbiased exponent is clamped to [-127, 128] (rceil: [-127, 127]); 128 and a NaN amax
give code 255 (NaN), an infinite amax gives 254 under rceil. An all-zero block gets the
smallest scale, 2^-127. The elements are v / X, saturated at the element's largest finite
value and rounded (elements.round_element); the result is those times X, so a block with
a NaN is all NaN, an inf saturates to max_elem * X (inf again when that overflows).

``fp32`` (torchao float8 tensorwise/rowwise, TE current scaling, DeepSeek-V3 tiles):
s = float32(max_elem / max(amax, 1e-12)) computed in float64 as torchao's
``amax_to_scale``; optionally rounded down to a power of two
(``round_scales_to_power_of_2``); elements = round(v * s), result = elements / s. A NaN or
inf amax makes the group NaN (s is NaN or 0).

``e4m3`` (NVFP4, torchao ``nvfp4_quantize`` with a per-tensor scale): a per-tensor fp32
scale t = amax_tensor / (448 * max_elem); each block's scale is E4M3(clamp(amax_block /
max_elem / t, 2^-6, 448)); elements = round(v * ((1 / t) / block scale)); result =
elements * (t * block scale). Same operations in the same order as torchao, so bitwise the
same; except that an all-zero tensor (t = 0) gives zeros where torchao gives NaN.

Deliberate differences from torchao's CPU path (the tests show each): a block whose e8m0
code is 0 (amax below ~2^(emax-126)) is divided by X = 2^-127 here, as OCP and
microxcaling do; torchao divides by 2^-126 (floor/ceil/even, a Triton workaround) or
multiplies by 1 (rceil) but multiplies by 2^-127 on dequantize. And rceil's ceil(log2) is
exact here where torchao's eager fallback uses float32 ``log2``, which rounds up to an
integer for quotients just above a power of two >= 2^8.
"""

from __future__ import annotations

import torch

from cprec.quant.elements import Element, round_element, round_saturated

RULES = ("floor", "rceil", "ceil", "even")
E8M0_BIAS, E8M0_NAN = 127, 255
FP32_EPS = 1e-12  # torchao float8_utils.EPS: amax floor of fp32 scales
E4M3 = Element("e4m3", "float", 8, 4, 3)
E4M3_MAX, E4M3_TINY = 448.0, 2.0 ** -6  # torchao nvfp4 E4M3_EPS = finfo(e4m3).tiny
_MANTISSA, _EXPONENT = 0x7FFFFF, 0x7F800000


def e8m0_codes(amax: torch.Tensor, elem: Element, rule: str = "floor") -> torch.Tensor:
    """The biased E8M0 code (int32, 0..255) of each float32 ``amax`` under ``rule``."""
    if rule == "rceil":
        return _rceil_codes(amax / elem.max_value)
    bits = amax.view(torch.int32)
    if rule == "even" and elem.man_bits < 23:
        bits = (bits + (1 << (22 - elem.man_bits))) & _EXPONENT
    exponent = ((bits >> 23) & 0xFF) - E8M0_BIAS
    if rule == "ceil":
        exponent = exponent + ((bits & _MANTISSA) > 0).to(torch.int32)
    elif rule not in ("floor", "even"):
        raise ValueError(f"scale rule must be one of {RULES}, got {rule!r}")
    codes = torch.clamp(exponent - elem.emax, -E8M0_BIAS, E8M0_BIAS + 1) + E8M0_BIAS
    return torch.where(torch.isnan(amax), E8M0_NAN, codes)


def _rceil_codes(descale: torch.Tensor) -> torch.Tensor:
    """ceil(log2(descale)) + 127 clamped to 0..254, exactly; NaN -> 255, inf -> 254."""
    bits = descale.view(torch.int32)
    exponent = ((bits >> 23) & 0xFF) - E8M0_BIAS + ((bits & _MANTISSA) > 0).to(torch.int32)
    exponent = torch.where(descale <= 2.0 ** -E8M0_BIAS, -E8M0_BIAS, exponent)  # 0, subnormal
    codes = torch.clamp(exponent, -E8M0_BIAS, E8M0_BIAS) + E8M0_BIAS
    codes = torch.where(torch.isinf(descale), E8M0_NAN - 1, codes)
    return torch.where(torch.isnan(descale), E8M0_NAN, codes)


def e8m0_values(codes: torch.Tensor) -> torch.Tensor:
    """2^(code - 127) as float32 (code 0: 2^-127, a float32 subnormal; 255: NaN)."""
    values = (codes << 23).view(torch.float32)
    values = torch.where(codes == 0, 2.0 ** -E8M0_BIAS, values)
    return torch.where(codes == E8M0_NAN, float("nan"), values)


def quantize_e8m0(groups: torch.Tensor, elem: Element, rule: str, key: torch.Tensor | None = None,
                  dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(result, codes): each group (a slice along ``dim``) scaled by its E8M0 X, rounded,
    times X."""
    amax = groups.abs().amax(dim=dim, keepdim=True)
    codes = e8m0_codes(amax, elem, rule)
    scale = e8m0_values(codes)
    v = torch.div(groups, scale).clamp_(-elem.max_value, elem.max_value)
    return round_saturated(v, elem, key).mul_(scale), codes


def fp32_scales(amax: torch.Tensor, elem: Element, pow2: bool = False) -> torch.Tensor:
    """torchao ``amax_to_scale``: float32(max_elem / max(amax, 1e-12)) in float64, or that
    rounded down to a power of two."""
    scale = (elem.max_value / torch.clamp(amax.to(torch.float64), min=FP32_EPS)).to(torch.float32)
    return torch.exp2(torch.floor(torch.log2(scale))) if pow2 else scale


def quantize_fp32(groups: torch.Tensor, elem: Element, scale: torch.Tensor,
                  key: torch.Tensor | None = None) -> torch.Tensor:
    """Each group times its fp32 ``scale`` (broadcast), rounded, divided by it (torchao
    float8)."""
    v = torch.mul(groups, scale).clamp_(-elem.max_value, elem.max_value)
    return round_saturated(v, elem, key).div_(scale)


def quantize_e4m3(groups: torch.Tensor, elem: Element, key: torch.Tensor | None = None,
                  dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """(result, block scales): NVFP4's two-level scaling of each group (a slice along
    ``dim``; module docstring); the per-tensor amax is that of all groups."""
    amax = groups.abs().amax(dim=dim, keepdim=True)
    per_tensor = amax.max() / (E4M3_MAX * elem.max_value)
    per_tensor = torch.where(per_tensor == 0, 1.0, per_tensor)  # all zeros: zeros, not NaN
    block = torch.clamp(amax / elem.max_value / per_tensor, E4M3_TINY, E4M3_MAX)
    block = round_element(block, E4M3)
    reciprocal = (1.0 / per_tensor) / block
    v = torch.mul(groups, reciprocal).clamp_(-elem.max_value, elem.max_value)
    return round_saturated(v, elem, key).mul_(per_tensor * block), block
