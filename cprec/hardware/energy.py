"""Energy of a training step on an accelerator built for its formats: per multiply-accumulate
by operand format, and per bit moved to and from memory.

Every constant is from M. Horowitz, "Computing's energy problem (and what we can do about
it)", ISSCC 2014, 45 nm at 0.9 V (his Figure 1.1.9 table):
  integer add 8 bit 0.03 pJ, 32 bit 0.1 pJ;  integer multiply 8 bit 0.2 pJ, 32 bit 3.1 pJ;
  float add 16 bit 0.4 pJ, 32 bit 0.9 pJ;    float multiply 16 bit 1.1 pJ, 32 bit 3.7 pJ;
  64-bit reads: SRAM 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ; DRAM 1.3-2.6 nJ.
Formats the table lacks are scaled from it by stated rules:
- an integer multiplier's energy grows with the product of its operand widths (an array
  multiplier's area): 0.2 pJ * a*b/64, which gives 3.2 pJ at 32x32 against the table's 3.1;
- a float multiplier's with the product of the significands (mantissa + 1 bits), as a
  power law through the table's two points (fp16 11x11 bits 1.1 pJ, fp32 24x24 3.7 pJ):
  3.7 pJ * (pa*pb/576)**0.777; an integer operand of a float GEMM counts its width;
- accumulation is the table's 32-bit add: integer 0.1 pJ for integer x integer products,
  float 0.9 pJ otherwise (fp32 accumulators, as tensor cores use for low-precision floats).
Memory: every bit moved costs one DRAM read or write (the table's low end, 1.3 nJ per 64
bits) and one pass through a 1 MB on-chip SRAM (100 pJ per 64 bits).
"""

from __future__ import annotations

import math

from cprec.hardware.formats import OperandFormat

INT_MULT_8_PJ = 0.2
INT_ADD_32_PJ = 0.1
FLOAT_ADD_32_PJ = 0.9
FLOAT_MULT_16_PJ, FLOAT_MULT_32_PJ = 1.1, 3.7
FLOAT_MULT_EXPONENT = math.log(FLOAT_MULT_32_PJ / FLOAT_MULT_16_PJ) / math.log(24 * 24 / (11 * 11))
DRAM_PJ_PER_BIT = 1300.0 / 64
SRAM_PJ_PER_BIT = 100.0 / 64


def mac_energy_pj(a: OperandFormat, b: OperandFormat) -> float:
    """One multiply-accumulate of an ``a`` operand by a ``b`` operand, in picojoules."""
    if a.kind == b.kind == "int":
        return INT_MULT_8_PJ * a.bits * b.bits / 64 + INT_ADD_32_PJ
    product = a.significand * b.significand / (24 * 24)
    return FLOAT_MULT_32_PJ * product ** FLOAT_MULT_EXPONENT + FLOAT_ADD_32_PJ


def traffic_energy_pj(bits: float) -> float:
    """Moving ``bits`` once between DRAM and the compute units, through on-chip SRAM."""
    return bits * (DRAM_PJ_PER_BIT + SRAM_PJ_PER_BIT)
