"""Element formats of the scaled formats: what one value of a block is rounded to.

Three kinds, named as in config:

- floats ``e<E>m<M>`` (sign, E exponent bits, M stored mantissa bits, bias 2^(E-1)-1,
  subnormals). The OCP MX names keep their OCP meaning: ``e4m3`` is OCP's E4M3 "fn" (no inf,
  largest 448), ``e2m1``, ``e2m3``, ``e3m2`` have no inf/NaN encodings (every code is a
  number: largest 6, 7.5, 28). Every other ``e<E>m<M>`` (``e5m2`` included, largest 57344)
  is IEEE-style with infinities, as ``optim.weight_format`` reads it.
- ``int<B>``: symmetric two's-complement codes -(2^(B-1)-1) .. 2^(B-1)-1 read as fixed point
  with B-2 fraction bits, as OCP's MXINT8 (B=8: values k/64, largest 127/64, emax 0). With an
  fp32 scale the unit cancels and it is the usual symmetric int<B>.
- ``fixed<B>``: cprec's asymmetric fixed point (fixed.py, reference.py): 2^B - 1 steps over
  each group's min..max, zero exact. Only with fp32-style ranges (no e8m0 / e4m3 scales).

Why a separate module: the scaled formats need the OCP largest values (floatfmt's
``FloatFormat`` derives E4M3's but not E2M1's) and int/fixed elements; the float rounding
itself is floatfmt's ``quantize_float`` (reused, not copied).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from cprec.errors import ConfigError
from cprec.quant.floatfmt import FloatFormat, quantize_float
from cprec.quant.reference import grid, uniform_from_hash

FLOAT, INT, FIXED = "float", "int", "fixed"
_EXPONENT_BITS = 0x7F800000
# OCP MX elements without inf/NaN: every exponent code holds numbers
FINITE_ONLY = {(2, 1), (2, 3), (3, 2)}
HELP = ("fixed<B> (B in 1..24), int<B> (B in 2..24), e4m3, e5m2, e3m2, e2m3, e2m1 or "
        "any e<E>m<M> (E in 1..8, M in 0..23)")


@dataclass(frozen=True)
class _Grid(FloatFormat):
    """A FloatFormat whose largest finite value is given (OCP's finite-only elements)."""

    finite_max: float | None = None

    @property
    def max_value(self) -> float:
        return self.finite_max if self.finite_max is not None else FloatFormat.max_value.fget(self)


@dataclass(frozen=True)
class Element:
    """One element format: ``kind`` float/int/fixed and its ``bits`` / ``exp_bits`` /
    ``man_bits`` (for int: B-2 fraction bits)."""

    name: str
    kind: str
    bits: int
    exp_bits: int = 0
    man_bits: int = 0

    @property
    def grid(self) -> _Grid:
        """The float grid ``quantize_float`` rounds onto (float elements)."""
        finite = (self.exp_bits, self.man_bits) in FINITE_ONLY
        has_inf = self.kind == FLOAT and self.name != "e4m3" and not finite
        top = (2 - 2.0 ** -self.man_bits) * 2.0 ** ((1 << self.exp_bits) - 1 - _bias(self)) \
            if finite else None
        return _Grid(self.exp_bits, self.man_bits, has_inf, top)

    @property
    def max_value(self) -> float:
        """Largest finite value (saturation point)."""
        if self.kind == FLOAT:
            return self.grid.max_value
        if self.kind == INT:
            return ((1 << (self.bits - 1)) - 1) * 2.0 ** -self.man_bits
        return float((1 << self.bits) - 1)  # fixed: the top code

    @property
    def emax(self) -> int:
        """Exponent of the largest power of two <= max_value: OCP's emax_elem (E4M3 8,
        E5M2 15, E2M3 2, E3M2 4, E2M1 2, INT8 0)."""
        return math.floor(math.log2(self.max_value))


def _bias(elem: Element) -> int:
    return (1 << (elem.exp_bits - 1)) - 1


def parse_element(name: str, key: str = "elem") -> Element:
    """``fixed<B> | int<B> | e<E>m<M>`` -> Element; ConfigError (one line) otherwise."""
    text = str(name).strip().lower()
    if m := re.fullmatch(r"e(\d+)m(\d+)", text):
        e, man = int(m.group(1)), int(m.group(2))
        if 1 <= e <= 8 and 0 <= man <= 23:
            return Element(text, FLOAT, 1 + e + man, e, man)
    if m := re.fullmatch(r"int(\d+)", text):
        bits = int(m.group(1))
        if 2 <= bits <= 24:
            return Element(text, INT, bits, 0, bits - 2)
    if m := re.fullmatch(r"fixed(\d+)", text):
        bits = int(m.group(1))
        if 1 <= bits <= 24:
            return Element(text, FIXED, bits)
    raise ConfigError(key, name, f"choose {HELP}")


def round_element(v: torch.Tensor, elem: Element, key: torch.Tensor | None = None) -> torch.Tensor:
    """``v`` (float32, already divided by its scale) rounded onto a float or int element's
    values: saturated at +-max_value first (NaN stays NaN, +-inf becomes +-max), then rounded
    to nearest-even, or stochastically with the hash stream ``key`` when one is given.

    Saturating before rounding is the same as after for round-to-nearest (max_value is on
    the grid) and keeps stochastic rounding on the grid. Subnormals of the element are kept
    (gradual underflow at the element's smallest exponent).
    """
    top = elem.max_value
    v = torch.clamp(v, -top, top)
    return round_saturated(v, elem, key)


def round_saturated(v: torch.Tensor, elem: Element, key: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """``round_element`` for ``v`` already within +-max_value, which it may overwrite (the
    callers pass temporaries: in-place ops spare a tensor-sized allocation and its page
    faults per op, most of the time of an eager elementwise op on CPU)."""
    if elem.kind == FLOAT:
        if key is None and _fast_nearest_fits(elem.grid):
            return round_nearest_float(v, elem.grid)
        return quantize_float(v, elem.grid, "nearest" if key is None else "stochastic",
                              "saturate", key)
    unit = 2.0 ** -elem.man_bits
    codes = v.mul_(1 / unit)  # exact: a power of two
    codes = codes.round_() if key is None else codes.add_(_noise(v, key)).floor_()
    top = elem.max_value / unit
    return codes.clamp_(-top, top).mul_(unit)


def _fast_nearest_fits(fmt: FloatFormat) -> bool:
    """The element's smallest step is a normal float32 (bias + M <= 127: every format with
    E <= 7, and E = 8 without mantissa bits), so ``round_nearest_float`` can build its
    steps from exponent bits."""
    return fmt.min_exp - fmt.man_bits >= -126


def round_nearest_float(v: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """floatfmt.quantize_float(v, fmt, "nearest") for ``v`` already within +-max_value
    (NaN passes), bitwise (tests/quant/test_elements.py), ~10x faster on CPU (4M values:
    5 ms against 55 ms on one thread): the step
    2^(max(floor(log2|v|), min_exp) - man_bits) is read from v's exponent bits instead of
    torch.frexp, and no isfinite pass is needed (saturation came first)."""
    # 2^floor(log2|v|) as bits (exponent field only; 0 for zeros and fp32 subnormals),
    # raised to the element's smallest normal, less man_bits in the exponent: the step
    step = torch.bitwise_and(v.view(torch.int32), _EXPONENT_BITS)
    step = step.clamp_min_((fmt.min_exp + 127) << 23).sub_(fmt.man_bits << 23)
    step = step.view(torch.float32)
    return v.div_(step).round_().mul_(step)


def round_fixed(groups: torch.Tensor, bits: int, key: torch.Tensor | None = None,
                dim: int = -1) -> torch.Tensor:
    """Each group (a slice along ``dim``) on cprec's zero-exact asymmetric grid over its own
    min..max (reference.grid): to nearest as ``reference.round_nearest`` or stochastically."""
    levels = torch.tensor(float((1 << bits) - 1), device=groups.device)
    lo, hi = torch.aminmax(groups, dim=dim, keepdim=True)
    scale, offset = grid(lo, hi, levels, True)
    scaled = groups / scale
    codes = torch.round(scaled) if key is None else torch.floor(scaled + _noise(groups, key))
    return (torch.clamp(codes + offset, 0.0, levels) - offset) * scale


def _noise(v: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    index = torch.arange(v.numel(), device=v.device, dtype=torch.int32).view(v.shape)
    return uniform_from_hash(index, key)
