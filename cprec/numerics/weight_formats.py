"""The number formats weights can be stored in (``optim.weight_format``).

- ``fp32``: plain float32 (the default; training as before).
- ``bf16``, ``fp16``, or any float ``e<E>m<M>`` (e.g. ``e5m2``, ``e4m3``): IEEE-style
  (bias 2^(E-1)-1, subnormals, infinities), saturating at the largest finite value.
- ``fixed<B>``: B-bit two's-complement integers times a per-tensor power-of-two step,
  codes -(2^(B-1)-1) .. 2^(B-1)-1. The rule for the step: it is fixed once, from the
  tensor's values when the optimizer is built: the smallest power of two with
  (2^(B-1)-1) * step >= 2 * max|w0| (room for the weights to double), with max|w0| taken as
  at least 0.5 (zero-initialized biases still get a usable grid). Values beyond the range
  saturate at +-(2^(B-1)-1) * step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from cprec.errors import ConfigError
from cprec.quant import FloatFormat
from cprec.quant.floatfmt import quantize_float
from cprec.quant.reference import uniform_from_hash

NAMED = {"bf16": (8, 7), "fp16": (5, 10)}
REAL_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FIXED_MIN_RANGE = 0.5  # max|w0| is taken as at least this when picking a fixed-point step
HELP = "fp32, bf16, fp16, e<E>m<M> (E in 1..8, M in 0..23, e.g. e5m2) or fixed<B> (B in 2..24)"


@dataclass(frozen=True)
class WeightFormat:
    """A storage format: ``float_format`` (e/m) or ``fixed_bits`` (per-tensor step); fp32 has
    neither."""

    name: str
    float_format: FloatFormat | None = None
    fixed_bits: int | None = None

    @property
    def is_fp32(self) -> bool:
        return self.float_format is None and self.fixed_bits is None

    def fixed_step(self, w0: torch.Tensor) -> torch.Tensor:
        """The per-tensor step of ``fixed<B>`` for a tensor whose initial values are ``w0``."""
        top = (1 << (self.fixed_bits - 1)) - 1
        span = 2 * max(float(w0.detach().abs().max()) if w0.numel() else 0.0, FIXED_MIN_RANGE)
        return torch.tensor(2.0 ** math.ceil(math.log2(span / top)), device=w0.device)

    def round(self, x: torch.Tensor, stochastic: bool = False, key: torch.Tensor | None = None,
              step: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (float32) rounded onto the format, to nearest (ties to even) or stochastically
        (``key`` selects the noise stream); fixed point needs the tensor's ``step``."""
        if self.float_format is not None:
            return quantize_float(x, self.float_format, "stochastic" if stochastic else "nearest",
                                  "saturate", key)
        if self.fixed_bits is None:
            return x
        top = (1 << (self.fixed_bits - 1)) - 1
        scaled = x / step
        if stochastic:
            index = torch.arange(x.numel(), device=x.device, dtype=torch.int32).view(x.shape)
            codes = torch.floor(scaled + uniform_from_hash(index, key))
        else:
            codes = torch.round(scaled)
        return torch.clamp(codes, -top, top) * step

    def representable(self, x: torch.Tensor, step: torch.Tensor | None = None) -> bool:
        """Every value of ``x`` is exactly a value of the format."""
        x = x.detach().float()
        return bool(torch.equal(self.round(x, step=step), x))


def parse_weight_format(name: str, key: str = "optim.weight_format") -> WeightFormat:
    """``fp32 | bf16 | fp16 | e<E>m<M> | fixed<B>`` -> WeightFormat; ConfigError otherwise."""
    if name == "fp32":
        return WeightFormat(name)
    if name in NAMED:
        return WeightFormat(name, FloatFormat(*NAMED[name]))
    if m := re.fullmatch(r"e(\d+)m(\d+)", name):
        e, man = int(m.group(1)), int(m.group(2))
        if 1 <= e <= 8 and 0 <= man <= 23:
            return WeightFormat(name, FloatFormat(e, man))
    if m := re.fullmatch(r"fixed(\d+)", name):
        bits = int(m.group(1))
        if 2 <= bits <= 24:
            return WeightFormat(name, fixed_bits=bits)
    raise ConfigError(key, name, f"choose {HELP}")
