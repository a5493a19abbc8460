"""Element rounding: the fast nearest-even path is floatfmt.quantize_float, bitwise."""

from __future__ import annotations

import pytest
import torch

from cprec.quant.elements import _fast_nearest_fits, parse_element, round_element
from cprec.quant.floatfmt import quantize_float


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "e3m3", "e6m5"])
def test_fast_nearest_is_quantize_float(name: str) -> None:
    """Random float32 bit patterns (every exponent, subnormals, +-0, NaN) plus the element's
    ties, largest value and just beyond it, saturated then rounded both ways."""
    elem = parse_element(name)
    assert _fast_nearest_fits(elem.grid)
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(-2 ** 31, 2 ** 31 - 1, (200_000,), generator=g, dtype=torch.int32)
    x = patterns.view(torch.float32)
    top = elem.max_value
    grid = torch.linspace(-top, top, 4097)
    x = torch.cat([x, grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([top, -top, top * 1.01])])
    fast = round_element(x, elem)
    slow = quantize_float(torch.clamp(x, -top, top), elem.grid, "nearest", "saturate")
    assert torch.equal(torch.isnan(fast), torch.isnan(x)) and torch.isnan(slow).equal(torch.isnan(x))
    keep = ~torch.isnan(x)
    assert torch.equal(fast[keep].view(torch.int32), slow[keep].view(torch.int32))


def test_wide_formats_take_quantize_float() -> None:
    assert not _fast_nearest_fits(parse_element("e8m23").grid)
    x = torch.randn(1000)
    assert torch.equal(round_element(x, parse_element("e8m23")), x)
