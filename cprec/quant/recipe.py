"""A layer's quantization recipe: one OperandSpec for each operand of its three GEMMs.

A training step of a Linear/Conv layer runs three GEMMs, each reducing over its own axis:

- ``forward``     Y  = W X      operands ``w``, ``x``   (over the input features)
- ``input_grad``  dX = W^T dY   operands ``w``, ``dy``  (over the output features)
- ``weight_grad`` dW = dY X^T   operands ``dy``, ``x``  (over the batch / tokens)

With block, row or tile scales the same tensor needs a different quantization in each GEMM
it enters, taken from the high-precision tensor (never a re-quantized one: Q->DQ->Q hurts,
TransformerEngine#1490), so W, X and dY each appear twice. ``high_precision`` keeps a
whole GEMM unquantized (torchao ``rowwise_with_gw_hp``: the weight-gradient GEMM in high
precision). The Hadamard transform is allowed on the weight-gradient operands only and on
both or neither: it cancels only when both sides of the product carry it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cprec.errors import ConfigError
from cprec.quant.spec import OperandSpec

# GEMM -> its two operands' roles, in the order GemmSpec holds them
GEMMS: dict[str, tuple[str, str]] = {"forward": ("w", "x"), "input_grad": ("w", "dy"),
                                     "weight_grad": ("dy", "x")}


@dataclass(frozen=True)
class GemmSpec:
    """The two operands of one GEMM (roles as ``GEMMS`` names them) and whether the GEMM
    stays in high precision (then neither operand is quantized)."""

    first: OperandSpec
    second: OperandSpec
    high_precision: bool = False


@dataclass(frozen=True)
class LayerRecipe:
    """The six operand specs of a layer's training step."""

    forward: GemmSpec
    input_grad: GemmSpec
    weight_grad: GemmSpec

    def __post_init__(self) -> None:
        for gemm, role, spec in self.operands():
            if spec.hadamard and gemm != "weight_grad":
                raise ConfigError(f"{gemm}.{role}.hadamard", True, "the random Hadamard "
                                  "transform applies to the weight-gradient GEMM's operands only")
        wg = self.weight_grad
        if wg.first.hadamard != wg.second.hadamard:
            raise ConfigError("weight_grad.hadamard", (wg.first.hadamard, wg.second.hadamard),
                              "both weight-gradient operands or neither (the transforms cancel "
                              "only in pairs)")

    def gemm(self, name: str) -> GemmSpec:
        if name not in GEMMS:
            raise KeyError(f"unknown GEMM {name!r}; choose from {', '.join(GEMMS)}")
        return getattr(self, name)

    def operand(self, gemm: str, role: str) -> OperandSpec | None:
        """The spec of ``role`` in ``gemm``; None when that GEMM stays in high precision."""
        spec = self.gemm(gemm)
        if role not in GEMMS[gemm]:
            raise KeyError(f"{gemm} has operands {GEMMS[gemm]}, not {role!r}")
        if spec.high_precision:
            return None
        return spec.first if GEMMS[gemm][0] == role else spec.second

    def operands(self) -> Iterator[tuple[str, str, OperandSpec]]:
        """(gemm, role, spec) for all six operands, high-precision GEMMs included."""
        for name, roles in GEMMS.items():
            spec = getattr(self, name)
            yield name, roles[0], spec.first
            yield name, roles[1], spec.second

    @classmethod
    def uniform(cls, spec: OperandSpec | str) -> LayerRecipe:
        """Every operand as ``spec`` (a spec or a preset name), no GEMM kept high."""
        op = OperandSpec.parse(spec)
        return cls(GemmSpec(op, op), GemmSpec(op, op), GemmSpec(op, op))

    @classmethod
    def parse(cls, value: Mapping[str, Any], key: str = "quant") -> LayerRecipe:
        """From a plain dict: ``operand`` (defaults for all six: a preset name or fields)
        and per GEMM ``{<role>: name-or-fields, high_precision: bool}``; e.g.
        ``{"operand": "mxfp8_e4m3", "weight_grad": {"high_precision": True}}``."""
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "a mapping with operand, forward, input_grad, weight_grad")
        unknown = set(value) - {"operand", *GEMMS}
        if unknown:
            name = sorted(unknown)[0]
            raise ConfigError(f"{key}.{name}", value[name],
                              f"unknown key; choose from operand, {', '.join(GEMMS)}")
        default = value.get("operand", {})
        default = OperandSpec.parse(default, f"{key}.operand")
        gemms = {name: _gemm(value.get(name, {}), default, roles, f"{key}.{name}")
                 for name, roles in GEMMS.items()}
        return cls(**gemms)


def _gemm(value: Mapping[str, Any], default: OperandSpec, roles: tuple[str, str],
          key: str) -> GemmSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(key, value, f"a mapping with {roles[0]}, {roles[1]}, high_precision")
    for name in value:
        if name not in (*roles, "high_precision"):
            raise ConfigError(f"{key}.{name}", value[name],
                              f"unknown key; choose from {roles[0]}, {roles[1]}, high_precision")
    high = value.get("high_precision", False)
    if not isinstance(high, bool):
        raise ConfigError(f"{key}.high_precision", high, "true or false")
    specs = [_operand(value.get(role), default, f"{key}.{role}") for role in roles]
    return GemmSpec(specs[0], specs[1], high)


def _operand(value: Any, default: OperandSpec, key: str) -> OperandSpec:
    """None: the default; a name: that preset; fields: the default with them replaced."""
    if value is None:
        return default
    if isinstance(value, Mapping) and "format" not in value:
        return OperandSpec.parse({**default.__dict__, **value}, key)
    return OperandSpec.parse(value, key)
