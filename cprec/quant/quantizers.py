"""One quantizer interface for the layers, whatever the number format.

A ``Quantizer`` tells a quantized layer how to round its inputs (activation and weight) in
forward and its error (the gradient w.r.t. its output) in backward, and which widths the
format itself imposes. ``FixedPointQuantizer`` (CPT's grids, fixed.py) and
``FloatFormatQuantizer`` (simulated float formats, floatfmt.py) implement it;
``build_quantizer`` picks one from the ``quant`` config group. The layers (modules.py) only
ever call these methods, so a new format is one new class here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cprec.config import QuantConfig
from cprec.errors import ConfigError
from cprec.quant.fixed import (
    RoundError,
    StraightThrough,
    quantize_inputs,
    stochastic_round_tensor,
)
from cprec.quant.floatfmt import FloatFormat, quantize_float
from cprec.quant.pergemm import HADAMARD_STRIDE, LayerGemms, ScaledConv2d, ScaledLinear
from cprec.quant.recipe import LayerRecipe
from cprec.quant.recipes import layer_recipe, recipe_widths
from cprec.quant.scaled import quantize_operand

if TYPE_CHECKING:
    from cprec.quant.modules import QuantMixin

FULL = 32  # bits meaning full precision: no quantization


class Quantizer(ABC):
    """How a layer quantizes, whatever its bits are; shared by all layers of a model."""

    quantize_errors: bool
    per_gemm = False  # True: the layer's whole step is the quantizer's (``linear``/``conv2d``)

    @property
    def format_bits(self) -> tuple[int, int] | None:
        """(forward, backward) widths the format imposes; None: any widths (fixed point)."""
        return None

    @abstractmethod
    def inputs(self, layer: QuantMixin, x: torch.Tensor, weight: torch.Tensor,
               ste: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """x and weight rounded for ``layer`` at ``layer.fw_bits`` (< 32): with ``ste``
        connected to autograd by the straight-through estimator, else plain tensors."""

    @abstractmethod
    def round_error(self, error: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
        """The error rounded at ``bits`` (stochastically, noise stream ``key``)."""

    def attach(self, layer: QuantMixin, name: str, index: int) -> None:
        """Called once per layer the model swap quantizes (``name``, ``index``: its
        qualified name and order): a quantizer with per-layer state gives the layer its own."""
        return None

    def error_rounding(self, bits: int) -> tuple[int, RoundError] | None:
        """``(bits, round_error)`` for a backward pass at ``bits``; None: errors stay as they
        are (full precision, or error quantization off)."""
        if bits >= FULL or not self.quantize_errors:
            return None
        return bits, self.round_error


@dataclass(frozen=True)
class FixedPointQuantizer(Quantizer):
    """Asymmetric uniform grids (fixed.py): weights per output channel and activations per
    tensor rounded to nearest, errors per tensor rounded stochastically.

    Activations use the batch range in training, tracked as an EMA (``act_momentum``) in
    the layer's ``act_lo``/``act_hi`` buffers, and that EMA at eval once it has been seen.
    ``zero_exact``: weight and activation grids hold 0 exactly (default); False: CPT's grid
    from min to max (fixed.py).
    """

    quantize_errors: bool = True
    act_momentum: float = 0.9
    zero_exact: bool = True
    kernels: str = "simulated"  # simulated | int8 | auto: the layers' GEMMs (quant/int8_layers.py)

    def inputs(self, layer: QuantMixin, x: torch.Tensor, weight: torch.Tensor,
               ste: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs_and_range(layer, x, weight, ste)[:2]

    def inputs_and_range(self, layer: QuantMixin, x: torch.Tensor, weight: torch.Tensor,
                         ste: bool) -> tuple[torch.Tensor, ...]:
        """``inputs`` and the activation range its grid was made from: (x_q, w_q, lo, hi)."""
        bits, zero_exact = layer.fw_bits, self.zero_exact
        if layer.training:
            xq, wq, lo, hi = quantize_inputs(x, weight, bits, ste=ste, zero_exact=zero_exact)
            layer.track_range(lo, hi, self.act_momentum)
            return xq, wq, lo, hi
        if layer.act_seen:
            return quantize_inputs(x, weight, bits, layer.act_lo, layer.act_hi, ste=ste,
                                   zero_exact=zero_exact)
        return quantize_inputs(x, weight, bits, ste=ste, zero_exact=zero_exact)

    def round_error(self, error: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
        return stochastic_round_tensor(error, bits, key)


@dataclass(frozen=True)
class FloatFormatQuantizer(Quantizer):
    """A simulated float format (floatfmt.py): activations and weights rounded to ``fmt``
    (``rounding``: nearest or stochastic), errors stochastically to ``error_fmt`` (default
    ``fmt``; e.g. hybrid FP8: E4M3 forward, E5M2 errors). The format fixes the widths."""

    fmt: FloatFormat
    error_fmt: FloatFormat | None = None  # None: the same as fmt
    rounding: str = "nearest"
    overflow: str = "saturate"
    quantize_errors: bool = True

    def __post_init__(self) -> None:
        if self.error_fmt is None:
            object.__setattr__(self, "error_fmt", self.fmt)

    @property
    def format_bits(self) -> tuple[int, int]:
        return self.fmt.bits, self.error_fmt.bits

    def inputs(self, layer: QuantMixin, x: torch.Tensor, weight: torch.Tensor,
               ste: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # independent noise for the activation and the weight (one key each, in this order)
        stochastic = self.rounding == "stochastic"
        key_x = layer.rng.next_key(x.device) if stochastic else None
        key_w = layer.rng.next_key(x.device) if stochastic else None
        xq = quantize_float(x.detach(), self.fmt, self.rounding, self.overflow, key_x)
        wq = quantize_float(weight.detach(), self.fmt, self.rounding, self.overflow, key_w)
        return StraightThrough.apply(x, weight, xq, wq) if ste else (xq, wq)

    def round_error(self, error: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
        return quantize_float(error, self.error_fmt, "stochastic", self.overflow, key)


@dataclass(frozen=True)
class ScaledQuantizer(Quantizer):
    """The scaled formats (MX, NVFP4, FP8 per tensor / row / tile, delayed scaling): every
    operand of the layer's three GEMMs quantized along that GEMM's reduction axis
    (pergemm.py), per the six specs of ``recipe``. The element formats fix the widths."""

    recipe: LayerRecipe
    seed: int = 0
    telemetry: bool = False
    quantize_errors: bool = True
    rungs: dict[tuple[int, int], LayerRecipe] | None = None  # a ladder's recipes by (fw, bw) widths
    per_gemm = True

    @property
    def format_bits(self) -> tuple[int, int]:
        return recipe_widths(self.recipe)

    def attach(self, layer: QuantMixin, name: str, index: int) -> None:
        mode, padding = getattr(layer, "padding_mode", "zeros"), getattr(layer, "padding", 0)
        if mode != "zeros" or isinstance(padding, str):
            raise ConfigError("quant.format", "scaled", f"layer {name} pads with "
                              f"{mode!r} / {padding!r}; the scaled convolution "
                              "takes zero padding given in pixels")
        layer.gemms = LayerGemms(self.recipe, self.seed + HADAMARD_STRIDE * (index + 1),
                                 self.telemetry, self.rungs)
        layer.gemms.check_tiles(name, layer.weight, getattr(layer, "groups", 1))

    def linear(self, layer: QuantMixin, x: torch.Tensor) -> torch.Tensor:
        layer.gemms.select(layer.fw_bits, layer.bw_bits)
        return ScaledLinear.apply(x, layer.weight, layer.bias, layer)

    def conv2d(self, layer: QuantMixin, x: torch.Tensor) -> torch.Tensor:
        layer.gemms.select(layer.fw_bits, layer.bw_bits)
        return ScaledConv2d.apply(x, layer.weight, layer.bias, layer)

    def inputs(self, layer: QuantMixin, x: torch.Tensor, weight: torch.Tensor,
               ste: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward GEMM's operands (along the input features, axis 1)."""
        layer.gemms.select(layer.fw_bits, layer.bw_bits)
        xq = layer.gemms.quantize(layer, "forward", "x", x, 1)
        wq = layer.gemms.quantize(layer, "forward", "w", weight, 1)
        return StraightThrough.apply(x, weight, xq, wq) if ste else (xq, wq)

    def round_error(self, error: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
        """An output gradient as the input-gradient GEMM takes it (along the outputs, axis 1)."""
        spec = self.recipe.input_grad.second
        return error if self.recipe.input_grad.high_precision else \
            quantize_operand(error, spec, 1, key=key)


def _scaled(cfg: QuantConfig, seed: int = 0, rungs: dict | None = None) -> Quantizer:
    return ScaledQuantizer(layer_recipe(cfg), seed, cfg.telemetry, cfg.quantize_errors, rungs)


def _fixed_point(cfg: QuantConfig) -> Quantizer:
    return FixedPointQuantizer(cfg.quantize_errors, cfg.act_momentum, cfg.zero_exact, cfg.kernels)


def _float_format(cfg: QuantConfig) -> Quantizer:
    fmt = FloatFormat(cfg.exp_bits, cfg.man_bits, cfg.has_inf)
    error_fmt = None if cfg.error_exp_bits is None else \
        FloatFormat(cfg.error_exp_bits, cfg.error_man_bits, True)
    return FloatFormatQuantizer(fmt, error_fmt, cfg.rounding, cfg.overflow, cfg.quantize_errors)


# ``quant.format`` -> builder; config.QUANT_FORMATS names the same keys (tested), so that
# validation stays torch-free. A new format: a Quantizer subclass and one entry here.
QUANTIZERS: dict[str, Callable[[QuantConfig], Quantizer]] = {"fixed": _fixed_point,
                                                             "float": _float_format,
                                                             "scaled": _scaled}


def build_quantizer(cfg: QuantConfig, seed: int = 0, rungs: dict | None = None) -> Quantizer:
    """The quantizer the ``quant`` config group describes (``quant.format``); ``seed`` (the
    run's) seeds the scaled formats' Hadamard signs; ``rungs`` are a ladder of formats'
    recipes (recipes.ladder_recipes)."""
    if cfg.format == "scaled":
        return _scaled(cfg, seed, rungs)
    return QUANTIZERS[cfg.format](cfg)


def format_bits(cfg: QuantConfig) -> tuple[int, int] | None:
    """(forward, backward) widths a float format imposes, its fixed precision; None for
    fixed point (the schedule chooses the bits)."""
    return build_quantizer(cfg).format_bits
