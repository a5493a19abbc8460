"""The MX block kernel: the C version returns bitwise what scales.py's torch ops return, for
every OCP element, the floor/ceil/even rules, any axis, partial blocks and the edge values."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from cprec.quant import backends
from cprec.quant import native as native_lib
from cprec.quant.mxblocks import quant_mx_blocks, supported
from cprec.quant.scaled import quantize_with_scales
from cprec.quant.spec import preset


def edge_tensor(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-40, 36, shape[-1])
    flat = x.view(-1)
    flat[::97], flat[3], flat[5], flat[7], flat[11], flat[13] = 0.0, -0.0, float("nan"), \
        float("inf"), 1e-42, -3e38
    return x


@pytest.mark.skipif(not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")),
                    reason="no C compiler")
@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4",
                                 "mxint8"])
@pytest.mark.parametrize("rule", ["floor", "ceil", "even"])
def test_native_kernel_is_bitwise_the_torch_ops(fmt: str, rule: str) -> None:
    assert native_lib.library() is not None, "a C compiler is here but the kernels did not build"
    spec = preset(fmt, rule=rule)
    assert supported(spec.element, rule)
    for shape, axis in [((8, 16, 6, 6), 1), ((96, 40), 0), ((96, 40), 1), ((3, 50, 7), 1), ((77,), 0)]:
        x = edge_tensor(shape, len(shape) + axis)
        native = backends.implementations(quant_mx_blocks)[backends.NATIVE]
        ours = native(x, axis, 32, rule, spec.element)[0]
        torch_ops = quantize_with_scales(x, spec, axis)[0]
        assert torch.equal(ours.view(torch.int32), torch_ops.view(torch.int32)), (shape, axis)


def test_rceil_and_stochastic_rounding_stay_with_torch() -> None:
    assert not supported(preset("mxfp8_e4m3").element, "rceil")
