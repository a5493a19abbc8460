"""Simulated float formats against torch's own casts (issue #3 item 7).

Round to nearest (ties to even) must agree bit for bit with ``x.to(dtype).float()`` for
fp16, bf16 and both fp8 formats: on a log-uniform sweep 1e-12..1e6 of both signs, on every
representable value, on every exact tie between neighbours and just either side of it,
through subnormals and at overflow. Stochastic rounding picks one of the two neighbours
with probability proportional to closeness, so it is unbiased.
"""

from __future__ import annotations

import pytest
import torch

from cprec.quant.floatfmt import FORMATS, FloatFormat, quantize_float
from cprec.quant.modules import QuantRNG

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e5m2": torch.float8_e5m2,
          "fp8_e4m3": torch.float8_e4m3fn}
# torch's float8_e4m3fn cast saturates at 448; the others overflow to inf
OVERFLOW = {"fp16": "inf", "bf16": "inf", "fp8_e5m2": "inf", "fp8_e4m3": "saturate"}


def bits_of(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def representable(name: str) -> torch.Tensor:
    """Every finite value of the format (float32, sorted, +0 once), from torch's bit patterns."""
    dtype = DTYPES[name]
    if dtype.itemsize == 2:
        patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16)
    else:
        patterns = torch.arange(0, 256, dtype=torch.int32).to(torch.uint8)
    values = patterns.view(dtype).float()
    return torch.unique(values[torch.isfinite(values)])  # sorted; -0 and +0 merge


def assert_same_bits(x: torch.Tensor, name: str, overflow: str | None = None) -> None:
    q = quantize_float(x, FORMATS[name], "nearest", overflow or OVERFLOW[name])
    ref = x.to(DTYPES[name]).float()
    bad = bits_of(q) != bits_of(ref)
    assert not bad.any(), (name, x[bad][:5].tolist(), q[bad][:5].tolist(), ref[bad][:5].tolist())


@pytest.mark.parametrize("name", list(DTYPES))
def test_formats_match_torch_limits(name: str) -> None:
    """Largest finite value, smallest normal and exponent bias agree with torch.finfo."""
    fmt, info = FORMATS[name], torch.finfo(DTYPES[name])
    assert fmt.max_value == info.max
    assert 2.0 ** fmt.min_exp == info.tiny
    assert fmt.bits == info.bits


@pytest.mark.parametrize("name", list(DTYPES))
def test_nearest_matches_torch_cast_log_uniform(name: str) -> None:
    """|x| log-uniform over 1e-12..1e6, both signs, plus zeros: bitwise equal to the cast."""
    gen = torch.Generator().manual_seed(0)
    n = 40000
    mag = 10.0 ** torch.empty(n).uniform_(-12, 6, generator=gen)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    x = torch.cat([mag * sign, torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-12, -1e6])])
    assert_same_bits(x, name)
    assert_same_bits(x[:40000].view(200, 4, -1), name)  # any shape


@pytest.mark.parametrize("name", list(DTYPES))
def test_nearest_matches_torch_cast_on_grid_and_ties(name: str) -> None:
    """Representable values, ties and their float32 neighbours all round like torch's cast.

    Every representable value maps to itself; every midpoint (a tie, even wins) and its two
    float32 neighbours round like the cast, subnormals included, for both signs.
    """
    v = representable(name)
    assert_same_bits(v, name)
    mids64 = (v[:-1].double() + v[1:].double()) / 2
    mids = mids64.float()
    assert torch.equal(mids.double(), mids64)  # the ties are exact float32 numbers
    below = torch.nextafter(mids, torch.full_like(mids, -float("inf")))
    above = torch.nextafter(mids, torch.full_like(mids, float("inf")))
    for x in (mids, below, above):
        assert_same_bits(x, name)
    # the ties really are decided by "even": half the ties round down, half up
    q = quantize_float(mids[v[1:] > 0], FORMATS[name])
    down = (q.double() < mids[v[1:] > 0].double()).float().mean().item()
    assert 0.4 < down < 0.6


def test_fp16_subnormals() -> None:
    """fp16 subnormals are multiples of 2^-24 (~6e-8); below half of that rounds to +-0."""
    tiny = 2.0**-24
    x = torch.tensor([tiny, 1e-7, 6e-8, 9e-8, 1.5 * tiny, 2.5 * tiny, 0.5 * tiny,
                      0.49 * tiny, 0.51 * tiny, 3e-8, 1e-9, 6.1e-5, 6.0e-5, 2.0**-14])
    x = torch.cat([x, -x])
    assert_same_bits(x, "fp16")
    q = quantize_float(x, FORMATS["fp16"])
    on_grid = q.double() / tiny
    assert torch.equal(on_grid, on_grid.round())
    assert q[2].item() == tiny and q[4].item() == 2 * tiny and q[5].item() == 2 * tiny
    assert q[6].item() == 0.0 and q[7].item() == 0.0 and q[8].item() == tiny
    assert torch.signbit(q[len(q) // 2 + 6])  # -0.5 * tiny -> -0, like the cast


def test_fp16_overflow_inf_and_saturate() -> None:
    """x >= 65520 (max + half ulp, the tie goes to even = inf) overflows; saturate clamps."""
    x = torch.tensor([65504.0, 65519.0, 65519.996, 65520.0, 65536.0, 1e5, 1e6, 3e38,
                      float("inf")])
    x = torch.cat([x, -x])
    assert_same_bits(x, "fp16", overflow="inf")
    q = quantize_float(x, FORMATS["fp16"], "nearest", "saturate")
    expected = x.half().float()
    finite = torch.isfinite(x)
    expected[finite] = expected[finite].clamp(-65504.0, 65504.0)
    assert torch.equal(bits_of(q), bits_of(expected))
    assert q[3].item() == 65504.0 and q[-3].item() == -65504.0


def test_fp8_overflow() -> None:
    """e5m2 overflows to inf past 57344 + 4096; e4m3fn saturates at 448 or becomes NaN."""
    x = torch.tensor([57344.0, 61439.0, 61440.0, 1e6])
    assert_same_bits(torch.cat([x, -x]), "fp8_e5m2", overflow="inf")
    y = torch.tensor([448.0, 463.9, 464.0, 465.0, 480.0, 1e4, 1e6])
    assert_same_bits(torch.cat([y, -y]), "fp8_e4m3", overflow="saturate")
    nan = quantize_float(y, FORMATS["fp8_e4m3"], "nearest", "inf")
    assert torch.isnan(nan[3:]).all() and torch.equal(nan[:3], torch.full((3,), 448.0))


def test_nan_and_inf_pass_through() -> None:
    """Non-finite inputs are returned as they are."""
    x = torch.tensor([float("nan"), float("inf"), -float("inf")])
    for name in DTYPES:
        q = quantize_float(x, FORMATS[name], "nearest", "saturate")
        assert torch.isnan(q[0]) and q[1].item() == float("inf") and q[2].item() == -float("inf")


def test_invalid_options_raise() -> None:
    """An unknown rounding or overflow mode is a ValueError naming the option."""
    with pytest.raises(ValueError, match="rounding"):
        quantize_float(torch.ones(2), FORMATS["fp16"], "floor")
    with pytest.raises(ValueError, match="overflow"):
        quantize_float(torch.ones(2), FORMATS["fp16"], "nearest", "wrap")


@pytest.mark.parametrize("name", ["fp16", "fp8_e4m3", "fp8_e5m2"])
def test_stochastic_rounding_is_unbiased(name: str) -> None:
    """Stochastic rounding picks a neighbour with probability by closeness: unbiased, keyed.

    q is one of the two representable neighbours of x, the upper one with probability
    f = (x - down) / (up - down), so E[q] = x: the mean error is within 5 sigma of 0.
    """
    fmt, v = FORMATS[name], representable(name).double()
    gen = torch.Generator().manual_seed(1)
    n = 1500
    top = min(fmt.max_value / 2, 1e3)
    smallest = float(v[v > 0].min())
    mag = 10.0 ** torch.empty(n, dtype=torch.float64).uniform_(
        torch.tensor(smallest).log10().item(), torch.tensor(top).log10().item(), generator=gen)
    x = (mag * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)).float()
    xd = x.double()
    i = torch.searchsorted(v, xd, right=True).clamp(1, len(v) - 1)
    down, up = v[i - 1], v[i]
    frac = (xd - down) / (up - down)
    rng = QuantRNG(7)
    n_keys = 200
    err = torch.empty(n_keys, n, dtype=torch.float64)
    first = None
    for j in range(n_keys):
        q = quantize_float(x, fmt, "stochastic", "saturate", rng.next_key(torch.device("cpu")))
        qd = q.double()
        assert ((qd == down) | (qd == up)).all()
        err[j] = (qd - xd) / (up - down)  # in units of the local spacing
        first = q if first is None else first
    var = frac * (1 - frac)
    for band in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]:
        sel = (frac >= band[0]) & (frac < band[1])
        total, sigma = err[:, sel].sum(), (n_keys * var[sel].sum()).sqrt()
        assert total.abs() < 5 * sigma + 1e-6, (band, total.item(), sigma.item())
    # reproducible per key, different across keys
    key = QuantRNG(7).next_key(torch.device("cpu"))
    assert torch.equal(quantize_float(x, fmt, "stochastic", "saturate", key), first)
    other = quantize_float(x, fmt, "stochastic", "saturate", torch.tensor(99, dtype=torch.int32))
    assert not torch.equal(other, first)


def test_custom_format_grid() -> None:
    """A made-up E3M2 format: max (2 - 2^-2) 2^(6 - 3) = 14, values on m 2^(e - 2)."""
    fmt = FloatFormat(3, 2)
    assert fmt.bias == 3 and fmt.min_exp == -2 and fmt.max_value == 14.0
    x = torch.tensor([0.1, 0.3, 1.1, 2.6, 13.0, 15.0, 100.0])
    q = quantize_float(x, fmt, "nearest", "saturate")
    # spacings: 2^-4 below 0.5 (subnormals and first binade), 0.25 in [1, 2), 0.5 in [2, 4), 2 in [8, 16)
    assert q.tolist() == [0.125, 0.3125, 1.0, 2.5, 12.0, 14.0, 14.0]
