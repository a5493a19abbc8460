"""MAC counting and the BitOPs ledger against hand-derived numbers (DESIGN.md cost contract).

A training step of batch B costs sum_l B * MACs_l * (a_l^2 + 2 a_l g_l) BitOPs, with
full-precision layers at 32/32; relative_cost is the total over the same at 32/32.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from cprec.config import ModelConfig, QuantConfig
from cprec.cost import FULL_PRECISION_BITOPS, CostLedger, measure_macs, step_bitops
from cprec.models import build_model
from cprec.quant import build_quantized, layer_bits, quant_layers, set_precision
from cprec.tasks.base import DatasetInfo


def resnet20(quantize_last: bool = False) -> nn.Module:
    model = build_model(ModelConfig(name="resnet20"), DatasetInfo("x", 3, 32, 10))
    model, _ = build_quantized(model, QuantConfig(quantize_last=quantize_last), seed=0)
    return model


def resnet20_macs_by_hand() -> dict[str, int]:
    """ResNet-20 for 3x32x32: conv out_elems * cin * k * k per layer, fc in * out.

    conv1 3->16 at 32x32; three stages of 3 BasicBlocks (two 3x3 convs each) with 16, 32, 64
    channels at 32x32, 16x16, 8x8; the first block of stages 2 and 3 has stride 2 and a 1x1
    stride-2 shortcut conv; global average pooling; fc 64 -> 10.
    """
    macs = {"conv1": (16 * 32 * 32) * 3 * 3 * 3}
    cin, size, block = 16, 32, 0
    for stage, cout in enumerate((16, 32, 64)):
        for i in range(3):
            if stage > 0 and i == 0:
                size //= 2
            out_elems = cout * size * size
            macs[f"layers.{block}.conv1"] = out_elems * cin * 3 * 3
            macs[f"layers.{block}.conv2"] = out_elems * cout * 3 * 3
            if cin != cout:
                macs[f"layers.{block}.shortcut.0"] = out_elems * cin * 1 * 1
            cin, block = cout, block + 1
    macs["fc"] = 64 * 10
    return macs


def test_resnet20_macs_match_the_architecture() -> None:
    """Every layer's MACs per image equal the hand count; 40,813,184 in all (40.81M)."""
    hand = resnet20_macs_by_hand()
    assert sum(hand.values()) == 40_813_184
    model = resnet20()
    macs = measure_macs(model, torch.randn(5, 3, 32, 32))  # only one sample is used
    assert macs == hand
    assert all(type(m) is int for m in macs.values())


def test_measure_macs_leaves_the_model_untouched() -> None:
    """Counting is an eval forward of one sample: mode, BN statistics and activation EMAs kept."""
    model = resnet20()
    set_precision(model, 4, 8)
    model.train()
    model(torch.randn(4, 3, 32, 32))  # sets the activation EMAs
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    seen = {n: m.act_seen for n, m in quant_layers(model).items()}
    measure_macs(model, torch.randn(1, 3, 32, 32))
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k]), k
    assert {n: m.act_seen for n, m in quant_layers(model).items()} == seen
    model.eval()
    measure_macs(model, torch.randn(1, 3, 32, 32))
    assert not model.training


def test_macs_of_a_layer_called_twice_and_grouped_conv() -> None:
    """A layer used twice counts twice; a grouped conv counts cin/groups per output."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(self.conv(x)).flatten(1))

    macs = measure_macs(Twice(), torch.randn(1, 4, 6, 6))
    assert macs == {"conv": 2 * (4 * 6 * 6) * (4 // 2) * 3 * 3, "fc": 144 * 3}


def test_static_8_8_all_quantized_costs_exactly_192_over_3072() -> None:
    """Every layer at 8/8: (8*8 + 2*8*8) / (3 * 32 * 32) = 192/3072 = 1/16, exactly."""
    model = resnet20(quantize_last=True)
    set_precision(model, 8, 8)
    bits = layer_bits(model)
    assert set(bits.values()) == {(8, 8)}
    ledger = CostLedger(measure_macs(model, torch.randn(1, 3, 32, 32)))
    for batch in (128, 128, 7):
        ledger.add(bits, batch)
    samples = 128 + 128 + 7
    assert ledger.bitops == samples * 40_813_184 * (64 + 128)
    assert type(ledger.bitops) is int
    assert ledger.full_precision_bitops == samples * 40_813_184 * 3072
    assert ledger.relative_cost == (64 + 128) / 3072 == 0.0625
    assert ledger.gbitops == ledger.bitops / 1e9


def test_full_precision_layers_count_32_32() -> None:
    """Default conversion keeps fc in full precision: it costs 3 * 32 * 32 per MAC."""
    model = resnet20()  # quantize_last=False
    set_precision(model, 8, 8)
    bits = layer_bits(model)
    assert bits["fc"] == (32, 32) and bits["conv1"] == (8, 8)
    macs = measure_macs(model, torch.randn(1, 3, 32, 32))
    ledger = CostLedger(macs)
    ledger.add(bits, 128)
    conv = 40_813_184 - 640
    assert ledger.bitops == 128 * (conv * 192 + 640 * 3072)
    assert ledger.relative_cost == (conv * 192 + 640 * 3072) / (40_813_184 * 3072)


def test_ledger_is_exact_integer_arithmetic() -> None:
    """Mixed per-layer bits over many steps: the total is the exact integer sum; huge runs
    (beyond float precision) stay exact; state_dict round trip preserves it."""
    macs = {"a": 1_000_003, "b": 7, "c": 123_457}
    ledger = CostLedger(macs)
    configs = [{"a": (3, 8), "b": (32, 32), "c": (5, 6)}, {"a": (8, 8), "b": (1, 2), "c": (2, 2)}]
    expected = 0
    for step in range(1000):
        bits, batch = configs[step % 2], 100 + step % 3
        ledger.add(bits, batch)
        expected += batch * sum(m * (bits[n][0] ** 2 + 2 * bits[n][0] * bits[n][1])
                                for n, m in macs.items())
    assert ledger.bitops == expected
    huge = 10**12 + 1  # 1e12 samples: totals ~1e21, past float64's 2^53
    ledger.add(configs[0], huge)
    expected += huge * (1_000_003 * 57 + 7 * 3072 + 123_457 * 85)
    assert ledger.bitops == expected and expected > 2**60
    samples = sum(100 + s % 3 for s in range(1000)) + huge
    assert ledger.full_precision_bitops == samples * sum(macs.values()) * 3072
    assert ledger.relative_cost == pytest.approx(float(Fraction(expected, ledger.full_precision_bitops)),
                                                 rel=1e-15)
    restored = CostLedger(macs)
    restored.load_state_dict(ledger.state_dict())
    assert restored.bitops == expected
    rows = restored.per_layer()
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert step_bitops(macs, configs[1], 3) == 3 * (1_000_003 * 192 + 7 * 5 + 123_457 * 12)


def test_full_precision_constant() -> None:
    """32/32 costs 32*32 + 2*32*32 = 3072 BitOPs per MAC."""
    assert FULL_PRECISION_BITOPS == 32 * 32 + 2 * 32 * 32 == 3072
    assert step_bitops({"x": 5}, {"x": (32, 32)}, 2) == 2 * 5 * 3072
