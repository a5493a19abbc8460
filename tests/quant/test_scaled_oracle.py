"""cprec.quant.scaled.fake_quantize against torchao's emulated formats, bitwise.

torchao (``torchao.prototype.mx_formats``, ``torchao.float8``) is code no one here wrote:
its CPU paths are plain torch ops, so every MX element format under every
ScaleCalculationMode, NVFP4, and the float8 tensorwise / rowwise scalings are compared
bit for bit (float32 bit patterns, so -0.0 vs 0.0 counts; NaN positions must agree), on
tensors with zeros, fp32 subnormals, the largest float32 values, all-zero blocks, ties of
the element grids, NaN and +-inf. Where cprec deliberately differs, a test below says how
and why and checks cprec against the definition instead.
"""

from __future__ import annotations

import pytest
import torch

from cprec.quant.elements import parse_element, round_element
from cprec.quant.scaled import fake_quantize
from cprec.quant.scales import e8m0_codes

mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
nvfp4 = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
f8scaling = pytest.importorskip("torchao.float8.float8_scaling_utils")
f8tensor = pytest.importorskip("torchao.float8.float8_training_tensor")
f8config = pytest.importorskip("torchao.float8.config")

MX_FORMATS = {"mxfp8_e4m3": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2,
              "mxfp6_e2m3": "fp6_e2m3", "mxfp6_e3m2": "fp6_e3m2",
              "mxfp4": torch.float4_e2m1fn_x2}
MX_ELEMENTS = {"mxfp8_e4m3": "e4m3", "mxfp8_e5m2": "e5m2", "mxfp6_e2m3": "e2m3",
               "mxfp6_e3m2": "e3m2", "mxfp4": "e2m1"}
RULES = ("floor", "rceil", "ceil", "even")
FMAX = torch.finfo(torch.float32).max


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Seeded normal samples: the tests do not depend on the global RNG or test order."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def edge_blocks(block: int = 32, seed: int = 0, finite: bool = False) -> torch.Tensor:
    """Rows of 256 made of ``block``-sized blocks that each probe one case."""
    g = torch.Generator().manual_seed(seed)

    def normal() -> torch.Tensor:
        return torch.randn(block, generator=g)

    blocks = [normal() * 2.0 ** k for k in range(-40, 41, 4)]  # magnitudes 2^-40 .. 2^40
    blocks += [torch.zeros(block), -torch.zeros(block)]  # all-zero blocks, both signs
    half = normal()
    half[::2] = 0
    subnormal = torch.full((block,), 1e-40)  # fp32 subnormals beside a normal value
    subnormal[:3] = torch.tensor([1.0, -3e-42, 1.4e-45])
    largest = normal() * 1e37
    largest[:2] = torch.tensor([FMAX, -FMAX])  # the largest float32 values: scale 2^127
    ties = torch.linspace(-6, 6, block)  # halfway points of the small element grids
    eighths = (torch.arange(block) - block // 2).float() / 8
    below_pow2 = torch.full((block,), 1 - 2.0 ** -24) * torch.tensor([1.0, -1.0]).repeat(block // 2)
    pow2 = torch.exp2(torch.randint(-10, 10, (block,), generator=g).float())
    blocks += [half, subnormal, largest, ties, eighths, below_pow2, pow2]
    if not finite:
        for value, where in ((float("nan"), 3), (float("inf"), 5), (-float("inf"), 7)):
            special = normal()
            special[where] = value
            blocks.append(special)
    x = torch.cat(blocks)
    return torch.cat([x, torch.randn(-x.numel() % 256 + 256, generator=g)]).reshape(-1, 256)


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same NaN positions and, elsewhere, the same float32 bit patterns."""
    assert actual.dtype == expected.dtype == torch.float32
    assert torch.equal(torch.isnan(actual), torch.isnan(expected))
    keep = ~torch.isnan(actual)
    diff = (actual.view(torch.int32) != expected.view(torch.int32)) & keep
    assert not diff.any(), f"{int(diff.sum())} values differ, first at {diff.nonzero()[0].tolist()}"


def torchao_mx(x: torch.Tensor, fmt: str, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    mode = getattr(mx.ScaleCalculationMode, rule.upper())
    t = mx.MXTensor.to_mx(x, MX_FORMATS[fmt], 32, scaling_mode=mode)
    return t.dequantize(torch.float32), t.scale.view(torch.uint8).reshape(-1)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("fmt", list(MX_FORMATS))
def test_mx_formats_match_torchao_bitwise(fmt: str, rule: str) -> None:
    """Every block whose E8M0 code is not 0 (or that is all zeros) is bitwise torchao's;
    code-0 blocks are the deliberate difference of the next test."""
    x = edge_blocks()
    expected, codes = torchao_mx(x, fmt, rule)
    actual = fake_quantize(x, fmt, scale_rule=rule)
    compared = (codes != 0) | (x.reshape(-1, 32) == 0).all(-1)
    assert compared.sum() >= compared.numel() - 2  # only the 2^-120 block is left out
    rows = compared.repeat_interleave(32)
    assert_bitwise(actual.reshape(-1)[rows], expected.reshape(-1)[rows])
    assert torch.isnan(actual).any() and torch.isinf(actual).any()  # NaN and inf blocks covered


@pytest.mark.parametrize("fmt", list(MX_FORMATS))
def test_code_zero_blocks_use_two_to_minus_127_both_ways(fmt: str) -> None:
    """Deliberate difference. A block with amax below ~2^(emax_elem - 127) gets E8M0 code 0, X = 2^-127. cprec
    divides and multiplies by that same X, as OCP defines it and microxcaling does; torchao
    divides by 2^-126 (floor/ceil/even: a clamp to the smallest normal that works around
    Triton flushing subnormals) or by 1 (rceil, after TE's ``exp2f_rcp``), then multiplies by
    2^-127 on dequantize, so its values there are off by a factor of 2 (or flushed)."""
    elem = parse_element(MX_ELEMENTS[fmt])
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1)) * 2.0 ** (elem.emax - 129)
    scale = 2.0 ** -127
    ocp = round_element(x / scale, elem) * scale
    for rule in RULES:
        expected, codes = torchao_mx(x, fmt, rule)
        assert (codes == 0).all()
        assert_bitwise(fake_quantize(x, fmt, scale_rule=rule), ocp)
    assert not torch.equal(torchao_mx(x, fmt, "floor")[0], ocp)


def test_rceil_is_exact_where_torchao_rounds_log2() -> None:
    """Deliberate difference. RCEIL is X = 2^ceil(log2(amax / max_elem)), what NVIDIA's
    ``cvt.rp.satfinite.ue8m0`` computes (and torchao's own PTX path). torchao's CPU fallback
    takes ceil(torch.log2(d)) in float32: for d just above a power of two >= 2^8 the log2
    rounds down onto the integer, so it picks a scale half the size and saturates the block's
    largest element. cprec computes the ceil from d's bits, exactly."""
    amax = torch.nextafter(torch.tensor(448.0 * 1024), torch.tensor(FMAX))
    x = torch.full((1, 32), 1.5)
    x[0, 0] = amax
    d = amax / 448
    assert d > 1024 and torch.log2(d) == 10  # the float32 log2 lands on the integer
    expected, codes = torchao_mx(x, "mxfp8_e4m3", "rceil")
    assert codes.item() == 127 + 10  # torchao: X = 2^10
    elem = parse_element("e4m3")
    assert e8m0_codes(amax.reshape(1, 1), elem, "rceil").item() == 127 + 11  # exact: 2^11
    actual = fake_quantize(x, "mxfp8_e4m3", scale_rule="rceil")
    assert_bitwise(actual, round_element(x / 2.0 ** 11, elem) * 2.0 ** 11)
    assert not torch.equal(actual, expected)  # 1.5 / 2^11 is below E4M3's half-subnormal


def torchao_nvfp4(x: torch.Tensor) -> torch.Tensor:
    scale = nvfp4.per_tensor_amax_to_scale(x.abs().max())
    return nvfp4.NVFP4Tensor.to_nvfp4(x, 16, per_tensor_scale=scale).dequantize(torch.float32)


def test_nvfp4_matches_torchao_bitwise() -> None:
    """NVFP4 with its per-tensor scale from the tensor's amax (torchao ``to_nvfp4`` with
    ``per_tensor_amax_to_scale``): finite edge blocks in blocks of 16, and random data."""
    for x in (edge_blocks(16, finite=True), randn(64, 256) * 3.0):
        assert_bitwise(fake_quantize(x, "nvfp4"), torchao_nvfp4(x))


def test_nvfp4_nonfinite_and_all_zero_tensors() -> None:
    """A NaN or inf anywhere makes the per-tensor scale NaN/inf, so the whole tensor is NaN
    in both. Deliberate difference: an all-zero tensor (per-tensor scale 0) is zeros in
    cprec, where torchao divides 0 by 0 and returns NaN."""
    for value in (float("nan"), float("inf")):
        x = randn(4, 32)
        x[1, 3] = value
        assert_bitwise(fake_quantize(x, "nvfp4"), torchao_nvfp4(x))
        assert torch.isnan(fake_quantize(x, "nvfp4")).all()
    zeros = torch.zeros(4, 32)
    assert torch.isnan(torchao_nvfp4(zeros)).all()
    assert_bitwise(fake_quantize(zeros, "nvfp4"), zeros)


def torchao_float8(x: torch.Tensor, dtype: torch.dtype, rowwise: bool, pow2: bool) -> torch.Tensor:
    granularity = f8config.ScalingGranularity.AXISWISE if rowwise \
        else f8config.ScalingGranularity.TENSORWISE
    t = f8scaling.hp_tensor_to_float8_dynamic(
        x, dtype, f8tensor.LinearMMConfig(), scaling_granularity=granularity,
        axiswise_dim=-1 if rowwise else None, round_scales_to_power_of_2=pow2)
    return t.to_original_precision()


@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("elem", ["e4m3", "e5m2"])
def test_float8_tensor_and_row_scaling_match_torchao(elem: str, granularity: str,
                                                     pow2: bool) -> None:
    """torchao.float8's dynamic scaling (``hp_tensor_to_float8_dynamic``, the tensorwise and
    rowwise recipes; ``round_scales_to_power_of_2`` as the rowwise recipe sets it), then
    ``to_original_precision``: bitwise, NaN/inf included (they make the group NaN)."""
    dtype = torch.float8_e4m3fn if elem == "e4m3" else torch.float8_e5m2
    for x in (edge_blocks(finite=True), edge_blocks()):
        expected = torchao_float8(x, dtype, granularity == "row", pow2)
        assert_bitwise(fake_quantize(x, f"fp8_{elem}_{granularity}", pow2=pow2), expected)
