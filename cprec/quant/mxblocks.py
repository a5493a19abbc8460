"""OCP MX block quantization (E8M0 scales, round to nearest) as one kernel call: the torch
reference here, the C version in native_kernels.c, dispatched by backends.py.

The MX formats are most of what the scaled layers quantize (six operands per layer and
step), and op by op in torch each costs ~10 passes over the tensor; the C kernel makes it
one read and one write, along any axis of a contiguous tensor viewed as (outer, L, inner),
so no operand is ever transposed or copied to be blocked. ``supported`` says which specs it
takes: E8M0 scales under the floor, ceil or even rule, nearest rounding, float elements
whose steps are normal float32 (every OCP element) or int elements; everything else (rceil,
stochastic rounding) stays with scales.py's torch ops.
"""

from __future__ import annotations

import torch

from cprec.quant.blocks import to_groups
from cprec.quant.elements import FLOAT, INT, Element, _fast_nearest_fits
from cprec.quant.scales import quantize_e8m0

RULE_CODES = {"floor": 0, "ceil": 1, "even": 2}


def supported(elem: Element, rule: str) -> bool:
    """The specs ``quant_mx_blocks`` computes (see the module docstring)."""
    return rule in RULE_CODES and (elem.kind == INT or elem.kind == FLOAT
                                   and _fast_nearest_fits(elem.grid))


def quant_mx_blocks(x: torch.Tensor, axis: int, block: int, rule: str, elem: Element
                    ) -> tuple[torch.Tensor]:
    """``(result,)``: ``x`` (contiguous float32) in MX blocks of ``block`` along ``axis``
    with E8M0 scales by ``rule``, rounded to nearest: scales.quantize_e8m0 of blocks.py's
    groups, the definition the C kernel matches bitwise."""
    groups, restore, dim = to_groups(x, "block", axis, block)
    return (restore(quantize_e8m0(groups, elem, rule, None, dim)[0]),)
