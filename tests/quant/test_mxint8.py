"""MXINT8 (torchao has none): against the OCP MX v1.0 definition in closed form, and against
microsoft/microxcaling's ``_quantize_mx``, transcribed below (it is unmaintained and not a
dependency; its pure-PyTorch CPU path is a few lines)."""

from __future__ import annotations

import math

import pytest
import torch

from cprec.quant.scaled import fake_quantize

# --- transcription -------------------------------------------------------------------------
# microsoft/microxcaling @ 7bc41952de394f5cc5e782baf132e7c7542eb4e4 (2024-08-19), the
# custom_cuda=False path of mx/mx_ops.py::_quantize_mx (lines 173-300) for elem_format=int8,
# scale_bits=8, one axis, with:
#   mx/formats.py:83-117       int8: ebits 0, mbits 8 (sign + implicit bit + 6), emax 0,
#                              max_norm = 2**emax * (2**(mbits-1) - 1) / 2**(mbits-2) = 127/64
#   mx/mx_ops.py:49-91         _shared_exponents(method="max"): floor(log2(amax)), amax 0 ->
#                              FP32_MIN_NORMAL
#   mx/mx_ops.py:276-292       shared_exp - emax; > 127 -> NaN; < -127 -> -127; A / 2**exp
#   mx/elemwise_ops.py:82-170  _quantize_elemwise_core(exp_bits=0): A * 2**(mbits-2), round,
#                              / 2**(mbits-2), clamp to +-max_norm, inf restored
#   mx/elemwise_ops.py:45-78   _round_mantissa: "nearest" = half away from zero, "even" =
#                              half to even
# _reshape_to_blocks (zero-pads the axis to a multiple of block_size) is written here as a
# movedim + pad + view of the last axis, which is what it does for one axis.
FP32_MIN_NORMAL = 2 ** (-127 + 1)


def microxcaling_mxint8(A: torch.Tensor, axis: int = -1, block_size: int = 32,
                        round: str = "even") -> torch.Tensor:
    moved = A.movedim(axis, -1)
    length = moved.shape[-1]
    pad = -length % block_size
    A = torch.nn.functional.pad(moved, (0, pad)).reshape(*moved.shape[:-1], -1, block_size)
    mbits, emax, max_norm = 8, 0, 2 ** 0 * float(2 ** (8 - 1) - 1) / 2 ** (8 - 2)
    shared_exp, _ = torch.max(torch.abs(A), dim=-1, keepdim=True)
    shared_exp = torch.floor(torch.log2(
        shared_exp + FP32_MIN_NORMAL * (shared_exp == 0).type(shared_exp.dtype)))
    shared_exp = shared_exp - emax
    scale_emax = 2 ** (8 - 1) - 1
    shared_exp[shared_exp > scale_emax] = float("NaN")
    shared_exp[shared_exp < -scale_emax] = -scale_emax
    A = A / (2 ** shared_exp)
    out = A * (2 ** (mbits - 2))
    if round == "nearest":
        out = torch.sign(out) * torch.floor(torch.abs(out) + 0.5)
    else:
        absA = torch.abs(out)
        maskA = ((absA - 0.5) % 2 == torch.zeros_like(out)).type(out.dtype)
        out = torch.sign(out) * (torch.floor(absA + 0.5) - maskA)
    out = out / (2 ** (mbits - 2))
    out = torch.clamp(out, min=-max_norm, max=max_norm)
    out[A == float("Inf")] = float("Inf")
    out[A == -float("Inf")] = -float("Inf")
    A = out * (2 ** shared_exp)
    A = A.reshape(*moved.shape[:-1], length + pad)[..., :length]
    return A.movedim(-1, axis)
# --- end of transcription ------------------------------------------------------------------


def ocp_mxint8_block(values: list[float]) -> list[float]:
    """OCP MX v1.0, MXINT8, one block, in float64: X = 2^(floor(log2 amax) - 0) clamped to
    2^-127 (an all-zero block: the smallest scale), elements k/64 with k = round half to
    even(v / X * 64) clamped to -127..127, result k/64 * X."""
    amax = max(abs(v) for v in values)
    exponent = max(math.frexp(amax)[1] - 1, -127) if amax > 0 else -127
    scale = 2.0 ** exponent
    return [max(-127, min(127, round(v / scale * 64))) / 64 * scale for v in values]


def test_mxint8_is_the_ocp_definition() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 64, generator=g) * torch.exp2(torch.randint(-60, 60, (6, 1), generator=g))
    x[0, :32] = 0.0  # an all-zero block
    x[1, :32] = torch.arange(32) / 128.0 + 1 / 256  # ties: k + 1/2 at 64 steps per unit
    x[2, :32] = 1e-40  # an fp32-subnormal block: X = 2^-127
    actual = fake_quantize(x, "mxint8").double()
    for row in range(x.shape[0]):
        for start in (0, 32):
            block = x[row, start:start + 32].double().tolist()
            assert actual[row, start:start + 32].tolist() == ocp_mxint8_block(block)


def test_mxint8_matches_microxcaling() -> None:
    """Equal values and NaN positions on random blocks (round="even": microxcaling's default
    "nearest" rounds ties away from zero, OCP and cprec to even), NaN and inf blocks (both:
    the whole block NaN, the scale exponent overflows), an all-zero block, along either axis
    and with a block that does not fill (both pad with zeros)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 70, generator=g) * torch.exp2(torch.randint(-30, 30, (8, 1), generator=g))
    x[0, 5], x[1, 40], x[2, :32] = float("nan"), float("inf"), 0.0
    for axis in (-1, 0):
        expected = microxcaling_mxint8(x, axis)
        actual = fake_quantize(x, "mxint8", axis=axis)
        assert torch.equal(torch.isnan(actual), torch.isnan(expected))
        keep = ~torch.isnan(actual)
        assert torch.equal(actual[keep], expected[keep])
    q = fake_quantize(x, "mxint8")
    assert torch.isnan(q[0, :32]).all() and torch.isnan(q[1, 32:64]).all()
    assert not torch.isnan(q[2:]).any() and (q[2, :32] == 0).all()


@pytest.mark.parametrize("magnitude", [2.0 ** 20, 2.0 ** 100])
def test_mxint8_shared_exponent_is_exact(magnitude: float) -> None:
    """Where microxcaling differs: it takes floor(log2(amax)) in float32, and log2 rounds
    up onto the integer for amax just below a large power of two, so it picks X twice as
    large. cprec reads the exponent from amax's bits (exact, as torchao's FLOOR and OCP)."""
    amax = torch.nextafter(torch.tensor(magnitude), torch.tensor(0.0))
    x = torch.full((1, 32), magnitude / 3)
    x[0, 0] = amax
    assert torch.log2(amax) == math.log2(magnitude)  # the float32 log2 is the integer
    actual = fake_quantize(x, "mxint8").double()
    assert actual[0].tolist() == ocp_mxint8_block(x[0].double().tolist())
    assert actual[0, 0] == 127 / 64 * magnitude / 2  # X = magnitude / 2, saturated at 127/64
    assert microxcaling_mxint8(x)[0, 0] == magnitude  # X = magnitude: 64/64
