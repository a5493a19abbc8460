"""The number format of each operand of a layer's three training GEMMs, and which hardware
data type can hold it.

A fixed-point operand of b bits is an integer grid of 2**b levels: an asymmetric grid's zero
point folds into a per-row correction term (as integer GEMM libraries do), so the GEMM needs
a data type that holds every signed b-bit integer, -2**(b-1) .. 2**(b-1)-1, exactly. A float
operand e<E>m<M> needs a type with at least its exponent and mantissa bits. 32 bits is fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from cprec.config import QuantConfig
from cprec.quant.elements import FLOAT
from cprec.quant.quantizers import FULL
from cprec.quant.recipes import SCALED, layer_recipe
from cprec.quant.spec import OperandSpec


@dataclass(frozen=True)
class OperandFormat:
    """An operand's element format: ``int`` (a b-bit grid) or ``float`` (exp/man bits)."""

    kind: str  # "int" | "float"
    bits: int  # storage bits per element (sign included)
    exp: int = 0
    man: int = 0
    scale_bits: float = 0.0  # scale storage per element (e.g. 8/32 for MX blocks)

    @property
    def significand(self) -> int:
        """Bits of precision a multiplier handles: the integer's width, or 1 + mantissa."""
        return self.bits if self.kind == "int" else self.man + 1

    @property
    def max_value(self) -> float:
        """The largest finite value: IEEE-style for 5+ exponent bits (the top exponent holds
        inf/NaN), OCP's for the 8-, 6- and 4-bit floats (E4M3 keeps one NaN code: 448)."""
        if self.kind == "int":
            return 2.0 ** (self.bits - 1) - 1
        bias = 2 ** (self.exp - 1) - 1
        if self.exp >= 5:
            return 2.0 ** (2 ** self.exp - 2 - bias) * (2 - 2.0 ** -self.man)
        if (self.exp, self.man) == (4, 3):
            return 448.0
        return 2.0 ** (2 ** self.exp - 1 - bias) * (2 - 2.0 ** -self.man)

    def max_exact_int(self) -> int:
        """The largest n such that every integer in -n..n is exactly representable."""
        if self.kind == "int":
            return 2 ** (self.bits - 1) - 1
        return int(min(2 ** (self.man + 1), self.max_value))


FP32 = OperandFormat("float", 32, 8, 23)


def fixed(bits: int) -> OperandFormat:
    return FP32 if bits >= FULL else OperandFormat("int", bits)


def holds(container: OperandFormat, operand: OperandFormat) -> bool:
    """Can a GEMM in data type ``container`` take ``operand``'s values exactly?"""
    if operand.kind == "int":
        need = 2 ** (operand.bits - 1)  # the most negative level, -2**(b-1)
        if container.kind == "int":
            return container.bits >= operand.bits
        return container.max_exact_int() >= need
    return container.kind == "float" and container.exp >= operand.exp and container.man >= operand.man


def scaled_format(spec: OperandSpec | None) -> OperandFormat:
    """A scaled operand's element format, with its scales' storage per element: an E8M0 or
    E4M3 scale (8 bits) per block, an fp32 one per block or tile; a per-tensor scale (and a
    per-row one, whose row length the recipe does not know) counts as free. None (a GEMM
    kept in high precision): fp32."""
    if spec is None:
        return FP32
    elem = spec.element
    group = {"block": spec.block_size, "tile": spec.tile[0] * spec.tile[1] if spec.tile else 0}
    size = group.get(spec.granularity, 0)
    scale_bits = (32 if spec.scale == "fp32" else 8) / size if size else 0.0
    if elem.kind == FLOAT:
        return OperandFormat("float", elem.bits, elem.exp_bits, elem.man_bits, scale_bits)
    return OperandFormat("int", elem.bits, scale_bits=scale_bits)


def layer_formats(quant: QuantConfig, fw_bits: int, bw_bits: int,
                  rungs: dict | None = None) -> tuple[OperandFormat, OperandFormat]:
    """(forward operands' format, errors' format) of a layer at ``fw_bits``/``bw_bits``: the
    weights and activations are at the forward one in all three GEMMs (quantized once, as
    cprec's fixed-point and float layers do), the error dY at the backward one. A scaled
    recipe (quant.format=scaled): the forward GEMM's activation x and the input-gradient
    GEMM's dY, each with its scales' storage; on a ladder of formats (``rungs``, by widths),
    the recipe of the rungs the bits stand for."""
    if quant.format == SCALED and fw_bits < FULL:
        recipe = (rungs or {}).get((fw_bits, bw_bits)) or layer_recipe(quant)
        return (scaled_format(recipe.operand("forward", "x")),
                scaled_format(recipe.operand("input_grad", "dy")) if bw_bits < FULL else FP32)
    if quant.format == "float" and fw_bits < FULL:
        fw = OperandFormat("float", 1 + quant.exp_bits + quant.man_bits, quant.exp_bits, quant.man_bits)
        e, m = (quant.error_exp_bits, quant.error_man_bits) if quant.error_exp_bits is not None \
            else (quant.exp_bits, quant.man_bits)
        bw = OperandFormat("float", 1 + e + m, e, m) if bw_bits < FULL else FP32
        return fw, bw
    return fixed(fw_bits), fixed(bw_bits)
