"""fake_quantize / quantize_operand in closed form: blocking along the given axis, padding,
tiles, stochastic rounding, and the reuse of cprec's own fixed-point and float rounding."""

from __future__ import annotations

import pytest
import torch

from cprec.quant.elements import parse_element, round_element
from cprec.quant.floatfmt import FloatFormat, quantize_float
from cprec.quant.reference import grid, quant_per_channel, quant_tensor_batch_range
from cprec.quant.scaled import OperandState, fake_quantize, quantize_operand
from cprec.quant.spec import FORMATS, OperandSpec, preset

E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded normal samples: the tests do not depend on the global RNG or test order."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def test_blocks_follow_the_given_axis() -> None:
    """Row r holds E2M1 values times 2^(3r): blocks along axis -1 (one magnitude each) are
    exact, blocks along axis 0 mix 2^0 .. 2^93 and flush the small rows to zero."""
    g = torch.Generator().manual_seed(0)
    codes = E2M1_VALUES[torch.randint(0, 8, (32, 64), generator=g)]
    codes[:, 0] = 4.0  # every row's amax a power of two: X = 2^(3r)
    x = codes * torch.exp2(3.0 * torch.arange(32)).unsqueeze(1)
    along_rows = fake_quantize(x, "mxfp4", axis=-1)
    along_cols = fake_quantize(x, "mxfp4", axis=0)
    assert torch.equal(along_rows, x)
    assert (along_cols[:20] == 0).all() and not torch.equal(along_cols, x)
    assert torch.equal(bits(along_cols), bits(fake_quantize(x.T.contiguous(), "mxfp4").T))


def test_axis_of_a_4d_tensor_is_a_moved_last_axis() -> None:
    x = randn(3, 40, 5, 7)
    for fmt in ("mxfp8_e4m3", "nvfp4", "fp8_e4m3_row", "fp8_e4m3_1x128"):
        moved = fake_quantize(x.movedim(1, -1).contiguous(), fmt).movedim(-1, 1)
        assert torch.equal(bits(fake_quantize(x, fmt, axis=1)), bits(moved)), fmt


def test_a_block_that_does_not_fill_is_zero_padded() -> None:
    """K = 27 (a first conv's 3x3x3) with blocks of 32, and K = 45 (a block and a part): as
    if padded with zeros to a whole number of blocks."""
    for k in (27, 45):
        x = randn(10, k) * 5
        padded = torch.nn.functional.pad(x, (0, 64 - k))
        for fmt in ("mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "fp8_e4m3_1x128",
                    "fp8_e4m3_128x128"):
            expected = fake_quantize(padded, fmt)[:, :k]
            assert torch.equal(bits(fake_quantize(x, fmt)), bits(expected)), (fmt, k)


def test_tiles_take_one_scale_per_2d_tile() -> None:
    """DeepSeek-V3's 128x128 weight blocks: each tile as its own per-tensor fp32 scale, the
    last row and column of tiles not full (zero padded)."""
    x = randn(200, 300) * torch.linspace(0.1, 10, 300)
    actual = fake_quantize(x, "fp8_e4m3_128x128")
    for r in range(0, 200, 128):
        for c in range(0, 300, 128):
            tile = x[r:r + 128, c:c + 128]
            expected = fake_quantize(tile.contiguous(), "fp8_e4m3_tensor")
            assert torch.equal(bits(actual[r:r + 128, c:c + 128]), bits(expected))
    rows = fake_quantize(x, "fp8_e4m3_1x128")
    assert torch.equal(bits(rows[:, :128]), bits(fake_quantize(x[:, :128].contiguous(), "fp8_e4m3_row")))


def test_plain_cast_is_floatfmt_rounding() -> None:
    """granularity none: cprec's existing float rounding (floatfmt.quantize_float, saturating)."""
    x = randn(1000) * 300
    e4m3 = FloatFormat(4, 3, has_inf=False)
    expected = quantize_float(x, e4m3, "nearest", "saturate")
    assert torch.equal(bits(fake_quantize(x, "e4m3", granularity="none")), bits(expected))


def test_fixed_point_groups_are_cprecs_fixed_point_grid() -> None:
    """fixed<B> per tensor and per output channel: bitwise reference.py's kernels (zero-exact)."""
    levels = torch.tensor(15.0)
    x, w = randn(8, 50), randn(6, 20, seed=1)
    expected_x = quant_tensor_batch_range(x, levels, True)[0]
    expected_w = quant_per_channel(w, levels, True)[0]
    assert torch.equal(bits(fake_quantize(x, "fixed4", granularity="tensor", scale="fp32")),
                       bits(expected_x))
    assert torch.equal(bits(fake_quantize(w, "fixed4", granularity="channel", scale="fp32")),
                       bits(expected_w))


def test_symmetric_int_with_fp32_row_scales() -> None:
    """int8 per row: s = 127 / amax, round(x s) / s (the 2^-6 unit of MX INT8 cancels)."""
    x = randn(16, 64) * 4
    scale = (127.0 / x.abs().amax(-1, keepdim=True).double()).float()
    expected = torch.clamp(torch.round(x * scale), -127, 127) / scale
    assert torch.equal(bits(fake_quantize(x, "int8", granularity="row", scale="fp32")),
                       bits(expected))


def test_output_is_float32_for_other_input_dtypes() -> None:
    x = randn(4, 64, dtype=torch.bfloat16)
    out = fake_quantize(x, "mxfp8_e4m3")
    assert out.dtype == torch.float32
    assert torch.equal(out, fake_quantize(x.float(), "mxfp8_e4m3"))


DRAWS = 2000
SR_FORMATS = [("mxfp4", {}), ("mxint8", {}), ("fp8_e4m3_tensor", {}), ("nvfp4", {}),
              ("fixed3", {"granularity": "tensor", "scale": "fp32"})]


@pytest.mark.parametrize("fmt,extra", SR_FORMATS)
def test_stochastic_rounding_is_unbiased_and_on_the_grid(fmt: str, extra: dict) -> None:
    """Over 2000 seeded draws every element's mean is within 4 standard errors of x, and
    every draw is on the grid of x's own scale (round-to-nearest keeps it; fixed point:
    integer codes). x lies in [-0.75, 1] with both ends present, so every group's scale is
    set by a value on the grid and nothing saturates (saturation would bias the mean)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 32, generator=g) * 1.75 - 0.75
    x[:, 0], x[:, 16], x[:, 1] = 1.0, 1.0, -0.75
    draws = torch.stack([fake_quantize(x, fmt, rounding="stochastic", generator=g, **extra)
                         for _ in range(DRAWS)])  # one key per call, as one per step
    mean, se = draws.double().mean(0), draws.double().std(0) / DRAWS ** 0.5
    assert ((mean - x.double()).abs() <= 4 * se + 1e-12).all()
    assert (se > 0).any() and not torch.equal(draws[0], fake_quantize(x, fmt, **extra))
    if fmt.startswith("fixed"):
        scale, offset = grid(*torch.aminmax(x), torch.tensor(7.0))
        codes = draws / scale + offset
        assert (codes - codes.round()).abs().max() < 1e-4 and codes.min() >= 0 and codes.max() <= 7
    else:
        for draw in draws[:200]:
            assert torch.equal(fake_quantize(draw, fmt, **extra), draw)


def test_stochastic_rounding_is_reproducible_from_the_generator() -> None:
    x = randn(4, 64)
    a = fake_quantize(x, "mxfp4", rounding="stochastic", generator=torch.Generator().manual_seed(1))
    b = fake_quantize(x, "mxfp4", rounding="stochastic", generator=torch.Generator().manual_seed(1))
    c = fake_quantize(x, "mxfp4", rounding="stochastic", generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_delayed_scaling_casts_with_the_history_scale() -> None:
    """fp8_e4m3_delayed: the first step casts with scale 1, the next with 448 / amax; a
    tensor beyond the delayed range saturates at 448 / scale."""
    spec = preset("fp8_e4m3_delayed", history=4)
    state = OperandState.for_spec(spec)
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(6)) * 3
    first = quantize_operand(x, spec, state=state)
    assert torch.equal(first, round_element(x, parse_element("e4m3")))  # scale 1.0
    state.amax.update()
    scale = torch.tensor(448.0) / x.abs().max()  # a true division, as TE (not 448.0 / t)
    assert state.amax.scale == scale
    second = quantize_operand(x * 4, spec, state=state)
    assert second.abs().max() == torch.tensor(448.0) / scale
    with pytest.raises(ValueError, match="delayed"):
        quantize_operand(x, spec)


def test_operand_spec_is_accepted_directly() -> None:
    x = randn(4, 64)
    spec = OperandSpec(elem="e2m1", block_size=16)
    assert torch.equal(fake_quantize(x, spec), fake_quantize(x, "mxfp4", block_size=16))
    rceil = OperandSpec(elem="e2m1", rule="rceil")
    assert torch.equal(fake_quantize(x, rceil, rounding="nearest"),
                       fake_quantize(x, "mxfp4", scale_rule="rceil"))


def test_the_input_is_never_modified() -> None:
    """The fast paths work in place, on temporaries only."""
    x = randn(8, 64) * 10
    x[0, 0] = float("nan")
    keep = x.clone()
    for fmt in FORMATS:
        state = OperandState.for_spec(preset(fmt))
        for rounding in ("nearest", "stochastic"):
            fake_quantize(x, fmt, rounding=rounding, state=state)
            assert torch.equal(bits(x), bits(keep)), (fmt, rounding)
