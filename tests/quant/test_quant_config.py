"""The quantizer chosen from the ``quant`` config, and the one interface the layers use.

``build_quantizer(cfg)`` gives a FixedPointQuantizer or a FloatFormatQuantizer; the layers
only call its ``inputs`` / ``error_rounding`` methods, and ``format_bits`` says which widths
a float format imposes (None for fixed point, whose bits the schedule chooses).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import QuantConfig, TrainConfig
from cprec.errors import ConfigError
from cprec.quant import (
    FORMATS,
    FixedPointQuantizer,
    FloatFormat,
    FloatFormatQuantizer,
    Quantizer,
    QuantRNG,
    build_quantized,
    build_quantizer,
    format_bits,
    quantize_model,
    set_precision,
)
from cprec.quant.fixed import quantize_activation, quantize_weight, stochastic_round_tensor
from cprec.quant.floatfmt import quantize_float
from cprec.validate import validate


def test_config_chooses_the_quantizer() -> None:
    """format=fixed gives FixedPointQuantizer, format=float a FloatFormatQuantizer, options kept."""
    fixed = build_quantizer(QuantConfig(quantize_errors=False, act_momentum=0.8))
    assert fixed == FixedPointQuantizer(quantize_errors=False, act_momentum=0.8)
    cfg = QuantConfig(format="float", exp_bits=4, man_bits=3, has_inf=False,
                      rounding="stochastic", overflow="inf")
    fp8 = build_quantizer(cfg)
    assert isinstance(fp8, FloatFormatQuantizer)
    assert fp8.fmt == fp8.error_fmt == FORMATS["fp8_e4m3"]  # errors: the same format by default
    assert (fp8.rounding, fp8.overflow, fp8.quantize_errors) == ("stochastic", "inf", True)
    cfg.error_exp_bits, cfg.error_man_bits = 5, 2
    assert build_quantizer(cfg).error_fmt == FORMATS["fp8_e5m2"]


def test_zero_exact_reaches_the_layers() -> None:
    """quant.zero_exact=false gives a fixed-point quantizer whose conv layers see CPT's grid:
    in training the batch range (the activation's min..max, each weight channel's), at eval
    the tracked range; true (the default) gives the zero-exact grid."""
    assert build_quantizer(QuantConfig()).zero_exact is True
    quantizer = build_quantizer(QuantConfig(zero_exact=False))
    assert quantizer == FixedPointQuantizer(zero_exact=False)
    torch.manual_seed(0)
    for zero_exact, q in ((False, quantizer), (True, build_quantizer(QuantConfig()))):
        conv = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False)), q, QuantRNG(0),
                              quantize_last=True)[0]
        set_precision(nn.Sequential(conv), 3, 32)
        x = torch.randn(2, 3, 5, 5) - 0.3
        wq = quantize_weight(conv.weight.detach(), 3, zero_exact)
        with torch.no_grad():
            out = conv(x)
            expected = F.conv2d(quantize_activation(x, 3, zero_exact=zero_exact)[0], wq)
            assert torch.equal(out, expected)
            conv.eval()
            x2 = torch.randn(2, 3, 5, 5) * 2
            given = quantize_activation(x2, 3, conv.act_lo, conv.act_hi, zero_exact)
            assert torch.equal(conv(x2), F.conv2d(given, wq))


def test_format_bits_are_the_float_widths() -> None:
    """format_bits: None for fixed point; (forward, error) widths of a float format."""
    assert format_bits(QuantConfig()) is None
    assert format_bits(QuantConfig(format="float", exp_bits=5, man_bits=10)) == (16, 16)
    assert format_bits(QuantConfig(format="float", exp_bits=8, man_bits=7)) == (16, 16)
    hybrid = QuantConfig(format="float", exp_bits=5, man_bits=10, error_exp_bits=5,
                         error_man_bits=2)
    assert format_bits(hybrid) == (16, 8)
    assert FloatFormatQuantizer(FloatFormat(3, 2)).format_bits == (6, 6)


def test_hybrid_fp8_errors_use_their_own_format() -> None:
    """E4M3 forward, E5M2 errors: the error reaching a layer lies on the E5M2 grid.

    Small errors (1e-4, below E4M3's smallest subnormal 2^-9) survive instead of flushing to 0.
    """
    cfg = QuantConfig(format="float", exp_bits=4, man_bits=3, has_inf=False, error_exp_bits=5,
                      error_man_bits=2)
    assert format_bits(cfg) == (8, 8)
    layer, _ = build_quantized(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), cfg, seed=0)
    set_precision(layer, 8, 8)
    seen = {}
    x = torch.randn(16, 8)
    out = layer[0](x)
    out.register_hook(lambda g: seen.setdefault("g", g))  # runs after the quantizing hook
    (out * 1e-4).sum().backward()
    g = seen["g"]
    assert torch.equal(quantize_float(g, FORMATS["fp8_e5m2"]), g)
    assert (g != 0).float().mean() > 0.9  # E4M3 rounding would leave ~5% of them non-zero


def test_error_format_needs_both_widths() -> None:
    """Config validation refuses an error format with only one of its two widths set."""
    cfg = TrainConfig()
    cfg.quant.error_exp_bits = 5
    with pytest.raises(ConfigError, match="together"):
        validate(cfg)


def test_float_format_rounding_ignores_the_layer_bits() -> None:
    """A float format fixes its own width: a layer at 5 or 8 forward bits rounds the same."""
    quantizer = FloatFormatQuantizer(FORMATS["fp8_e4m3"])
    layer = quantize_model(nn.Sequential(nn.Linear(6, 5)), quantizer, quantize_last=True)[0]
    x = torch.randn(4, 6)
    outs = []
    for bits in (5, 8):
        layer.fw_bits = bits
        xq, wq = quantizer.inputs(layer, x, layer.weight, ste=False)
        assert torch.equal(xq, quantize_float(x, FORMATS["fp8_e4m3"], "nearest", "saturate"))
        outs.append(layer(x))
    assert torch.equal(outs[0], outs[1])


def test_error_rounding_follows_bits_and_switch() -> None:
    """error_rounding: None at 32 bits or with quantize_errors off; else (bits, round_error)."""
    fixed = FixedPointQuantizer()
    assert fixed.error_rounding(32) is None
    assert FixedPointQuantizer(quantize_errors=False).error_rounding(4) is None
    bits, round_error = fixed.error_rounding(4)
    g, key = torch.randn(50), QuantRNG(0).next_key(torch.device("cpu"))
    assert bits == 4 and torch.equal(round_error(g, 4, key), stochastic_round_tensor(g, 4, key))
    fp8 = FloatFormatQuantizer(FORMATS["fp8_e4m3"], FORMATS["fp8_e5m2"])
    bits, round_error = fp8.error_rounding(8)
    assert torch.equal(round_error(g, 8, key),
                       quantize_float(g, FORMATS["fp8_e5m2"], "stochastic", "saturate", key))


class Halving(Quantizer):
    """A made-up format: inputs halved, errors doubled; records how the layer calls it."""

    quantize_errors = True

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inputs(self, layer, x, weight, ste):
        self.calls.append(("inputs", layer.fw_bits, ste))
        return (x / 2, weight / 2) if ste else (x.detach() / 2, weight.detach() / 2)

    def round_error(self, error, bits, key):
        self.calls.append(("error", bits, key.dtype))
        return error * 2


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layers_only_use_the_quantizer_interface(kind: str) -> None:
    """A new Quantizer subclass is all a layer needs: inputs at fw_bits, errors at bw_bits."""
    quantizer = Halving()
    base = nn.Linear(3, 2) if kind == "linear" else nn.Conv2d(3, 2, 1)
    layer = quantize_model(nn.Sequential(base), quantizer, quantize_last=True)[0]
    set_precision(nn.Sequential(layer), 5, 7)
    x = torch.randn(4, 3) if kind == "linear" else torch.randn(4, 3, 2, 2)
    x.requires_grad_()
    out = layer(x)
    weight = layer.weight.detach()
    with torch.no_grad():
        expected = base._conv_forward(x / 2, weight / 2, base.bias) if kind == "conv" \
            else nn.functional.linear(x / 2, weight / 2, base.bias)
    assert torch.allclose(out, expected)
    out.sum().backward()
    assert [c[0] for c in quantizer.calls] == ["inputs", "error"]
    assert quantizer.calls[0][1] == 5 and quantizer.calls[1][1:] == (7, torch.int32)
    per_channel = out.numel() // out.shape[1]  # positions summed into each bias entry
    assert torch.equal(layer.bias.grad, torch.full_like(layer.bias, 2.0 * per_channel))  # doubled


def test_config_names_exactly_the_registered_quantizers() -> None:
    """quant.format's allowed values (checked torch-free in config.py) are QUANTIZERS' keys."""
    from cprec.config import QUANT_FORMATS
    from cprec.quant.quantizers import QUANTIZERS

    assert set(QUANT_FORMATS) == set(QUANTIZERS)
