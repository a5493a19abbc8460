"""How one GEMM operand is quantized: ``OperandSpec``, its presets, parsing and validation.

One frozen record per operand, so that each of a layer's six GEMM operands (recipe.py) can
have its own format, taken from the high-precision tensor along its own reduction axis.
Every field is checked when the record is made; a bad value raises cprec's one-line
``ConfigError`` naming the field, the value and what is allowed, so a config mistake ends
before any tensor is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from cprec.errors import ConfigError
from cprec.quant.elements import FIXED, FLOAT, INT, Element, parse_element
from cprec.quant.scales import RULES

GRANULARITIES = ("none", "tensor", "channel", "row", "block", "tile")
SCALES = ("fp32", "e8m0", "e4m3")
AMAX = ("current", "delayed")
ROUNDINGS = ("nearest", "stochastic")


@dataclass(frozen=True)
class OperandSpec:
    """One operand's quantization; the defaults are OCP MXFP8 (E4M3, blocks of 32, E8M0).

    - ``elem``: element format (elements.py): ``fixed<B>``, ``int<B>``, ``e<E>m<M>``.
    - ``granularity``: ``none`` (no scale: a plain cast), ``tensor``, ``channel``/``row``
      (one scale per slice along the reduction axis), ``block`` (``block_size`` elements
      along it), ``tile`` (2-D ``tile`` = (rows, cols), cols along the axis); blocks.py.
    - ``scale``: ``fp32``, ``e8m0`` (power of two, ``rule`` floor/rceil/ceil/even) or
      ``e4m3`` (NVFP4: E4M3 block scales under a per-tensor fp32 scale); scales.py.
    - ``pow2``: fp32 scales rounded down to a power of two (torchao
      ``round_scales_to_power_of_2``).
    - ``amax``: ``current`` (this tensor) or ``delayed`` (the max of an amax history of
      ``history`` steps, Transformer Engine DelayedScaling; delayed.py).
    - ``rounding``: ``nearest`` (ties to even) or ``stochastic`` (seeded, unbiased).
    - ``hadamard``: a 16x16 random Hadamard transform first (hadamard.py); meaningful for
      the weight-gradient GEMM's operands only (recipe.py checks).
    """

    elem: str = "e4m3"
    granularity: str = "block"
    block_size: int = 32
    tile: tuple[int, int] | None = None
    scale: str = "e8m0"
    rule: str = "floor"
    pow2: bool = False
    amax: str = "current"
    history: int = 1024
    rounding: str = "nearest"
    hadamard: bool = False

    def __post_init__(self) -> None:
        if self.tile is not None:
            object.__setattr__(self, "tile", _tile(self.tile))
        _validate(self)

    @property
    def element(self) -> Element:
        return parse_element(self.elem)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | OperandSpec, key: str = "quant") -> OperandSpec:
        """A preset name (``FORMATS``), a dict of fields (``format`` names a preset to start
        from), or an OperandSpec; errors name ``key.<field>``."""
        if isinstance(value, OperandSpec):
            return value
        if isinstance(value, str):
            return preset(value, key)
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "a format name or a mapping of operand fields")
        items = dict(value)
        base = preset(items.pop("format"), f"{key}.format") if "format" in items else cls()
        allowed = {f.name for f in fields(cls)}
        for name in items:
            if name not in allowed:
                raise ConfigError(f"{key}.{name}", items[name],
                                  f"unknown field; choose from {', '.join(sorted(allowed))}")
        try:
            return replace(base, **items)
        except ConfigError as err:
            raise ConfigError(f"{key}.{err.key}", err.value, err.allowed) from None


def _mx(elem: str) -> dict[str, Any]:
    return {"elem": elem, "granularity": "block", "block_size": 32, "scale": "e8m0"}


def _fp32(elem: str, granularity: str, tile: tuple[int, int] | None = None) -> dict[str, Any]:
    return {"elem": elem, "granularity": granularity, "tile": tile, "scale": "fp32"}


# ``fake_quantize`` / config names -> OperandSpec fields
FORMATS: dict[str, dict[str, Any]] = {
    "mxfp8_e4m3": _mx("e4m3"), "mxfp8_e5m2": _mx("e5m2"), "mxfp6_e2m3": _mx("e2m3"),
    "mxfp6_e3m2": _mx("e3m2"), "mxfp4": _mx("e2m1"), "mxint8": _mx("int8"),
    "nvfp4": {"elem": "e2m1", "granularity": "block", "block_size": 16, "scale": "e4m3"},
    "nvfp4_16x16": {"elem": "e2m1", "granularity": "tile", "tile": (16, 16), "scale": "e4m3"},
    "fp8_e4m3_tensor": _fp32("e4m3", "tensor"), "fp8_e5m2_tensor": _fp32("e5m2", "tensor"),
    "fp8_e4m3_row": _fp32("e4m3", "row"), "fp8_e5m2_row": _fp32("e5m2", "row"),
    "fp8_e4m3_1x128": _fp32("e4m3", "tile", (1, 128)),
    "fp8_e4m3_128x128": _fp32("e4m3", "tile", (128, 128)),
    "fp8_e4m3_delayed": {**_fp32("e4m3", "tensor"), "amax": "delayed"},
    "fp8_e5m2_delayed": {**_fp32("e5m2", "tensor"), "amax": "delayed"},
    "mxfp8": _mx("e4m3"),  # OCP's MXFP8 by its usual name: E4M3 elements
    "bf16": {"elem": "e8m7", "granularity": "none"}, "fp16": {"elem": "e5m10", "granularity": "none"},
}


def preset(name: str, key: str = "quant.format", **overrides: Any) -> OperandSpec:
    """The OperandSpec a ``FORMATS`` name stands for, with ``overrides`` applied."""
    if name not in FORMATS:
        raise ConfigError(key, name, f"choose one of {', '.join(FORMATS)}")
    return OperandSpec(**{**FORMATS[name], **overrides})


def _tile(value: Any) -> tuple[int, int]:
    """``(r, c)``, ``[r, c]`` or ``"RxC"`` -> (r, c) of positive ints; ConfigError otherwise."""
    allowed = "a 2-D tile (rows, cols) of positive integers, e.g. [1, 128] or '128x128'"
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", value)
        parts = (int(m.group(1)), int(m.group(2))) if m else ()
    else:
        try:
            parts = tuple(value)
        except TypeError:
            parts = ()
    if len(parts) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0
                                  for p in parts):
        raise ConfigError("tile", value, allowed)
    return parts


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, value, f"choose one of {', '.join(allowed)}")


def _validate(spec: OperandSpec) -> None:
    """Each field alone, then the combinations that mean nothing (ConfigError)."""
    elem = parse_element(spec.elem)
    _choice("granularity", spec.granularity, GRANULARITIES)
    _choice("scale", spec.scale, SCALES)
    _choice("rule", spec.rule, RULES)
    _choice("amax", spec.amax, AMAX)
    _choice("rounding", spec.rounding, ROUNDINGS)
    for name in ("pow2", "hadamard"):
        if not isinstance(getattr(spec, name), bool):
            raise ConfigError(name, getattr(spec, name), "true or false")
    if spec.granularity == "block" and (isinstance(spec.block_size, bool) or
                                        not isinstance(spec.block_size, int) or spec.block_size < 1):
        raise ConfigError("block_size", spec.block_size, "a positive integer (elements per block)")
    if spec.granularity == "tile" and spec.tile is None:
        raise ConfigError("tile", None, "granularity=tile needs a 2-D tile, e.g. [1, 128]")
    if spec.granularity == "none" and elem.kind != FLOAT:
        raise ConfigError("granularity", "none", f"{elem.name} needs a range: tensor, channel, "
                          "row, block or tile")
    if elem.kind == FIXED and spec.scale != "fp32":
        raise ConfigError("scale", spec.scale, f"{elem.name} (asymmetric fixed point) takes its "
                          "range per group: use fp32")
    if spec.rule != "floor" and spec.scale != "e8m0":
        raise ConfigError("rule", spec.rule, f"scale rules apply to e8m0 scales; {spec.scale} "
                          "scales take floor (the default)")
    if spec.pow2 and spec.scale != "fp32":
        raise ConfigError("pow2", spec.pow2, "only fp32 scales are rounded to powers of two")
    if spec.amax == "delayed":
        _validate_delayed(spec, elem)


def _validate_delayed(spec: OperandSpec, elem: Element) -> None:
    if spec.granularity != "tensor" or spec.scale != "fp32" or elem.kind not in (FLOAT, INT):
        raise ConfigError("amax", "delayed", "delayed scaling is per tensor with fp32 scales "
                          "and a float or int element (Transformer Engine DelayedScaling)")
    if isinstance(spec.history, bool) or not isinstance(spec.history, int) or spec.history < 1:
        raise ConfigError("history", spec.history, "a positive integer (steps of amax history)")
