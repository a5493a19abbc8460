"""Simulated floating-point formats with any exponent/mantissa width.

A value is rounded onto the grid of a format with ``exp_bits`` exponent bits and
``man_bits`` stored mantissa bits (IEEE-754 layout: bias 2^(e-1)-1, gradual underflow
through subnormals). Rounding is round-to-nearest-even or stochastic; overflow saturates at
the largest finite value or becomes +-inf (NaN for formats without infinities, like
OCP's fp8 E4M3). The layers use it through ``FloatFormatQuantizer`` (quantizers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cprec.quant.reference import uniform_from_hash


@dataclass(frozen=True)
class FloatFormat:
    """A binary float format: sign, ``exp_bits`` exponent bits, ``man_bits`` stored mantissa."""

    exp_bits: int
    man_bits: int
    has_inf: bool = True  # False: the top exponent holds normal numbers (E4M3 "fn")

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def min_exp(self) -> int:
        """Exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def max_value(self) -> float:
        if self.has_inf:  # top exponent code is inf/NaN
            return (2 - 2.0 ** -self.man_bits) * 2.0 ** ((1 << self.exp_bits) - 2 - self.bias)
        # top exponent holds numbers; only the all-ones mantissa there is NaN
        return (2 - 2.0 ** (1 - self.man_bits)) * 2.0 ** ((1 << self.exp_bits) - 1 - self.bias)


FORMATS: dict[str, FloatFormat] = {
    "fp16": FloatFormat(5, 10),
    "bf16": FloatFormat(8, 7),
    "fp8_e4m3": FloatFormat(4, 3, has_inf=False),
    "fp8_e5m2": FloatFormat(5, 2),
}


def quantize_float(x: torch.Tensor, fmt: FloatFormat, rounding: str = "nearest",
                   overflow: str = "inf", key: torch.Tensor | None = None) -> torch.Tensor:
    """Round float32 ``x`` to ``fmt`` and return it as float32 (a fake cast).

    Stochastic rounding draws from the hash stream selected by ``key`` (see reference.py).
    Plain torch ops on every device: no fast back end is registered for it.
    """
    xf = x.float()
    _, exp = torch.frexp(xf)  # |x| = m * 2^exp with m in [0.5, 1)
    exp = torch.clamp(exp - 1, min=fmt.min_exp)  # subnormals share the smallest exponent
    ulp = torch.exp2((exp - fmt.man_bits).float())
    scaled = xf / ulp
    if rounding == "stochastic":
        index = torch.arange(xf.numel(), device=xf.device, dtype=torch.int32).view(xf.shape)
        noise = uniform_from_hash(index, key if key is not None else torch.tensor(0))
        q = torch.floor(scaled + noise) * ulp
    elif rounding == "nearest":
        q = torch.round(scaled) * ulp  # torch.round rounds half to even
    else:
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    big = q.abs() > fmt.max_value
    if overflow == "saturate":
        q = torch.clamp(q, -fmt.max_value, fmt.max_value)
    elif overflow == "inf":
        special = torch.copysign(torch.full_like(q, float("inf")), q) if fmt.has_inf \
            else torch.full_like(q, float("nan"))
        q = torch.where(big, special, q)
    else:
        raise ValueError(f"overflow must be 'saturate' or 'inf', got {overflow!r}")
    q = torch.where(torch.isfinite(xf), q, xf)  # inf and NaN pass through unchanged
    return q.to(x.dtype)
