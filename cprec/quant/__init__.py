"""Fake quantization for low-precision training: fixed point, float formats, Q layers.

Layout: ``quantizers`` (the one Quantizer interface, built from the ``quant`` config),
``fixed`` / ``floatfmt`` (the two number formats), ``modules`` (QConv2d/QLinear and the
precision setter), ``reference`` (the kernels' math as torch ops), ``backends`` (the fast
versions registered against it, and the ``CPREC_KERNELS`` switch), ``native`` (the C ones).
"""

from __future__ import annotations

from torch import nn

from cprec.config import QuantConfig
from cprec.quant.backends import backend, backend_for, set_backend
from cprec.quant.floatfmt import FORMATS, FloatFormat
from cprec.quant.modules import (
    FULL,
    QuantRNG,
    compute_layers,
    layer_bits,
    quant_layers,
    quantize_model,
    set_precision,
)
from cprec.quant.quantizers import (
    FixedPointQuantizer,
    FloatFormatQuantizer,
    Quantizer,
    build_quantizer,
    format_bits,
)

__all__ = ["FULL", "FORMATS", "FixedPointQuantizer", "FloatFormat", "FloatFormatQuantizer",
           "QuantRNG", "Quantizer", "backend", "backend_for", "build_quantized",
           "build_quantizer", "compute_layers", "format_bits", "layer_bits", "quant_layers",
           "quantize_model", "set_backend", "set_precision"]


def build_quantized(model: nn.Module, cfg: QuantConfig, seed: int,
                    rungs: dict | None = None) -> tuple[nn.Module, QuantRNG]:
    """Convert a model per the ``quant`` config (``rungs``: a ladder of formats' recipes);
    return it with its stochastic-rounding RNG."""
    rng = QuantRNG(seed + 7919)
    model = quantize_model(model, build_quantizer(cfg, seed, rungs), rng, cfg.quantize_first,
                           cfg.quantize_last, cfg.keep_full)
    return model, rng
