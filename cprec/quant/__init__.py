"""Fake quantization for low-precision training: fixed point, float formats, Q layers."""

from __future__ import annotations

from torch import nn

from cprec.config import QuantConfig
from cprec.quant.floatfmt import FORMATS, FloatFormat
from cprec.quant.modules import (
    FULL,
    QuantRNG,
    QuantSpec,
    compute_layers,
    layer_bits,
    quant_layers,
    quantize_model,
    set_precision,
)

__all__ = ["FULL", "FORMATS", "FloatFormat", "QuantRNG", "QuantSpec", "build_quantized",
           "compute_layers", "error_format", "float_format", "format_bits", "layer_bits", "quant_layers",
           "quantize_model", "set_precision", "spec_from_config"]


def float_format(cfg: QuantConfig) -> FloatFormat | None:
    """The configured float format, or None for fixed point."""
    return FloatFormat(cfg.exp_bits, cfg.man_bits, cfg.has_inf) if cfg.format == "float" else None


def error_format(cfg: QuantConfig) -> FloatFormat | None:
    """The float format of the errors: ``error_exp_bits``/``error_man_bits`` when set (e.g.
    hybrid FP8: E4M3 forward, E5M2 errors), else the forward format."""
    fmt = float_format(cfg)
    if fmt is None or cfg.error_exp_bits is None:
        return fmt
    return FloatFormat(cfg.error_exp_bits, cfg.error_man_bits, True)


def format_bits(cfg: QuantConfig) -> tuple[int, int] | None:
    """(forward, backward) widths of a float format, its fixed precision; None for fixed point."""
    fmt = float_format(cfg)
    return (fmt.bits, error_format(cfg).bits) if fmt else None


def spec_from_config(cfg: QuantConfig) -> QuantSpec:
    return QuantSpec(float_format(cfg), error_format(cfg), cfg.rounding, cfg.overflow,
                     cfg.quantize_errors, cfg.act_momentum)


def build_quantized(model: nn.Module, cfg: QuantConfig, seed: int) -> tuple[nn.Module, QuantRNG]:
    """Convert a model per the ``quant`` config; return it with its stochastic-rounding RNG."""
    rng = QuantRNG(seed + 7919)
    model = quantize_model(model, spec_from_config(cfg), rng, cfg.quantize_first,
                           cfg.quantize_last)
    return model, rng
