"""Typed config schemas of the scaled formats (``quant.format=scaled``): one spec per operand
of a layer's three training GEMMs.

A schema of its own, beside config.py (which imports it into ``QuantConfig``), because the
six operands and their GEMMs are a small tree of their own. Every field is optional: null
inherits, an operand from ``quant.operand`` (the default of all six), ``quant.operand``
from the OperandSpec defaults of cprec/quant/spec.py (OCP MXFP8: E4M3, blocks of 32, E8M0
scales). So a recipe file states only what differs, and one override such as
``quant.operands.weight_grad.dy.rounding=stochastic`` changes one operand. The values are
checked where they become an OperandSpec (cprec/quant/recipes.py, one line per mistake);
this module stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OperandConfig:
    """One operand's quantization (cprec/quant/spec.py ``OperandSpec``); null = inherited."""

    # a named format to start from: cprec.fake_quantize's names (mxfp8_e4m3, mxfp8_e5m2,
    # mxfp6_e2m3, mxfp6_e3m2, mxfp4, mxint8, nvfp4, nvfp4_16x16, fp8_e4m3_tensor,
    # fp8_e4m3_row, fp8_e4m3_1x128, fp8_e4m3_128x128, fp8_e4m3_delayed, ...)
    format: str | None = None
    elem: str | None = None  # element: fixed<B> | int<B> | e4m3 | e5m2 | e3m2 | e2m3 | e2m1 | any e<E>m<M>
    # none | tensor | channel | row | block | tile (along the GEMM's reduction axis)
    granularity: str | None = None
    # granularity=block: elements per block along the reduction axis (MX 32, NVFP4 16)
    block_size: int | None = None
    # granularity=tile: [rows, cols], cols along the reduction axis ([1, 128], [128, 128])
    tile: list[int] | None = None
    # fp32 | e8m0 (power of two, OCP MX) | e4m3 (NVFP4: E4M3 block scales x a per-tensor fp32
    # scale)
    scale: str | None = None
    # e8m0 scale rule: floor (OCP) | rceil | ceil | even (torchao's ScaleCalculationMode)
    rule: str | None = None
    # fp32 scales rounded down to a power of two (torchao round_scales_to_power_of_2)
    pow2: bool | None = None
    # current (this tensor's amax) | delayed (Transformer Engine DelayedScaling history)
    amax: str | None = None
    history: int | None = None  # amax=delayed: steps of amax history (TE's default 1024)
    rounding: str | None = None  # nearest (ties to even) | stochastic (seeded by the run's seed, resumable)
    # 16x16 random Hadamard transform first (weight-gradient operands only, both)
    hadamard: bool | None = None


@dataclass
class ForwardGemmConfig:
    """Y = W X, reduced over the input features (channels for Conv2d)."""

    w: OperandConfig = field(default_factory=OperandConfig)  # the weight, blocked along the input features
    x: OperandConfig = field(default_factory=OperandConfig)  # the input, blocked along the input features
    high_precision: bool = False  # true: this GEMM takes the unquantized tensors


@dataclass
class InputGradGemmConfig:
    """dX = W^T dY, reduced over the output features (channels)."""

    w: OperandConfig = field(default_factory=OperandConfig)  # the weight, blocked along the output features
    dy: OperandConfig = field(default_factory=OperandConfig)  # the output gradient, along the output features
    high_precision: bool = False  # true: this GEMM takes the unquantized tensors


@dataclass
class WeightGradGemmConfig:
    """dW = dY X^T, reduced over the batch / tokens (x space for Conv2d)."""

    # the output gradient, along batch x tokens / space
    dy: OperandConfig = field(default_factory=OperandConfig)
    x: OperandConfig = field(default_factory=OperandConfig)  # the input, along batch x tokens / space
    # true: this GEMM takes the unquantized tensors (torchao's rowwise_with_gw_hp)
    high_precision: bool = False


@dataclass
class OperandsConfig:
    """The per-GEMM overrides of ``quant.operand`` (cprec/quant/recipe.py ``LayerRecipe``)."""

    forward: ForwardGemmConfig = field(default_factory=ForwardGemmConfig)  # Y = W X
    input_grad: InputGradGemmConfig = field(default_factory=InputGradGemmConfig)  # dX = W^T dY
    weight_grad: WeightGradGemmConfig = field(default_factory=WeightGradGemmConfig)  # dW = dY X^T
