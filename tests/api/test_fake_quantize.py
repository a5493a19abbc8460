"""``cprec.fake_quantize``: exported lazily, and its documented definition in closed form."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import cprec
from cprec.errors import ConfigError


def test_importing_cprec_still_imports_no_torch() -> None:
    code = "import sys, cprec; cprec.__all__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "fake_quantize" in cprec.__all__


def test_mxfp8_floor_and_rceil_scales_of_one_block() -> None:
    """A block of 32 with amax 500: floor takes X = 2^(8 - 8) = 1, so 500 saturates to 448;
    rceil takes X = 2^ceil(log2(500/448)) = 2, so 500/2 = 250 rounds to 256 -> 512.
    0.3 in a block with amax 1: X = 2^-8, 76.8 lies in E4M3's [64, 128) (step 8) -> 80."""
    x = torch.zeros(2, 32)
    x[0, 0], x[0, 1], x[1, 0], x[1, 1] = 500.0, 3.0, 1.0, 0.3
    floor = cprec.fake_quantize(x, "mxfp8_e4m3")
    rceil = cprec.fake_quantize(x, "mxfp8_e4m3", scale_rule="rceil")
    assert floor[0, 0] == 448.0 and rceil[0, 0] == 512.0
    assert floor[0, 1] == 3.0 and rceil[0, 1] == 3.0
    assert floor[1, 1] == 80 * 2.0 ** -8 and floor[1, 0] == 1.0
    assert floor.dtype == torch.float32 and floor.shape == x.shape


def test_blocks_run_along_the_given_axis() -> None:
    """The outlier 500 shares a block with its row (axis=-1) or with its column (axis=0)."""
    x = torch.full((32, 32), 0.01)
    x[0, 0] = 500.0
    rows, cols = cprec.fake_quantize(x, "mxfp4"), cprec.fake_quantize(x, "mxfp4", axis=0)
    assert rows[0, 1] == 0 and rows[1, 0] != 0  # row 0's block flushes 0.01; column 0's keeps it
    assert cols[1, 0] == 0 and cols[0, 1] != 0


def test_nvfp4_per_tensor_and_block_scales() -> None:
    """amax 6 * 448 = 2688: t = 1, a block with amax 6 has block scale 1, so E2M1 values stay."""
    x = torch.zeros(16 * 2)
    x[0], x[16], x[17] = 2688.0, 6.0, 1.5
    y = cprec.fake_quantize(x, "nvfp4")
    assert y[0] == 2688.0 and y[16] == 6.0 and y[17] == 1.5


def test_spec_overrides_and_one_line_errors() -> None:
    x = torch.arange(1.0, 17.0)
    assert torch.equal(cprec.fake_quantize(x, "mxfp8_e4m3", block_size=16),
                       cprec.fake_quantize(x.reshape(1, 16), "mxfp8_e4m3").reshape(16))
    with pytest.raises(ConfigError, match="rule"):
        cprec.fake_quantize(x, "mxfp8_e4m3", scale_rule="round")
    with pytest.raises(ConfigError, match="mxfp9"):
        cprec.fake_quantize(x, "mxfp9")
