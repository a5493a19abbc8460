"""The scaled formats' config: ``quant.operand`` / ``quant.operands`` to a ``LayerRecipe``, and
what a scaled recipe cannot run with (checked up front: one line, exit 2, nothing written).

The named recipes are YAML files, conf/quant/<name>.yaml, each citing its source; this
module only reads the typed config (cprec/operand_config.py), so a recipe file and a
command-line override are the same thing.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from cprec.config import QuantConfig, TrainConfig, require
from cprec.errors import ConfigError
from cprec.quant.elements import FLOAT
from cprec.quant.recipe import GEMMS, LayerRecipe
from cprec.quant.spec import OperandSpec

SCALED = "scaled"
# schedule kinds a scaled recipe can follow: its widths are fixed by the formats (a
# format schedule, e.g. FP4 then FP8 before the lr decay, does not exist yet)
STATIC_KINDS = ("fp32", "static")


def _fields(value: Any) -> dict[str, Any]:
    """An OperandConfig as the OperandSpec fields it sets (nulls dropped)."""
    return {k: v for k, v in asdict(value).items() if v is not None}


def layer_recipe(cfg: QuantConfig) -> LayerRecipe:
    """The six operand specs ``quant.operand`` and ``quant.operands`` describe (ConfigError,
    naming the key, on any bad value)."""
    default = OperandSpec.parse(_fields(cfg.operand), "quant.operand")
    gemms: dict[str, Any] = {"operand": default}
    for gemm, roles in GEMMS.items():
        node = getattr(cfg.operands, gemm)
        gemms[gemm] = {"high_precision": node.high_precision,
                       **{role: fields for role in roles if (fields := _fields(getattr(node, role)))}}
    try:
        return LayerRecipe.parse(gemms, "quant.operands")
    except ConfigError as err:
        key = err.key if err.key.startswith("quant.") else f"quant.operands.{err.key}"
        raise ConfigError(key, err.value, err.allowed) from None


def recipe_widths(recipe: LayerRecipe) -> tuple[int, int]:
    """(forward, backward) element widths a recipe runs at (the schedule's bits and the cost
    ledger's): the widest forward operand, and the widest gradient operand (dY in either
    backward GEMM); a GEMM kept in high precision counts 32."""
    def bits(gemm: str, role: str) -> int:
        spec = recipe.operand(gemm, role)
        return 32 if spec is None else spec.element.bits

    forward = max(bits("forward", "w"), bits("forward", "x"))
    backward = max(bits("input_grad", "dy"), bits("weight_grad", "dy"))
    return min(forward, 32), min(backward, 32)


def check_scaled(cfg: TrainConfig) -> None:
    """A scaled recipe's specs, and the settings it cannot run with."""
    q = cfg.quant
    if q.format != SCALED:
        return
    recipe = layer_recipe(q)
    _check_tiles(recipe)
    name = cfg.schedule.name
    require(cfg.schedule.kind in STATIC_KINDS, "schedule", name,
            "quant.format=scaled has the fixed widths of its element formats (format schedules "
            "do not exist yet); use schedule=static or schedule=fp32")
    require(cfg.loss_scale.name == "none" and not cfg.loss_scale.telemetry, "loss_scale",
            cfg.loss_scale.name, "the scaled formats scale every block, row or tensor from its own "
            "amax, so loss scaling is meaningless there; use loss_scale=none")
    require(cfg.amp.name == "off", "amp", cfg.amp.name, "the scaled formats emulate the GEMM "
            "inputs themselves in float32; use amp=off")
    require(q.last_bits is None, "quant.last_bits", q.last_bits, "the scaled formats fix every "
            "quantized layer's widths; leave quant.last_bits=null (quant.quantize_last=true "
            "quantizes the classifier with the recipe)")
    require(cfg.trainer.devices == 1, "trainer.devices", cfg.trainer.devices, "the scaled "
            "formats' delayed amax histories and telemetry are per process (not all-reduced "
            "yet); use trainer.devices=1")


def _check_tiles(recipe: LayerRecipe) -> None:
    """2-D tiles need a float or int element with a scale (fixed point takes ranges per
    row or block); a tile's size is checked against each layer's axes when it runs."""
    for gemm, role, spec in recipe.operands():
        if spec.granularity == "tile" and spec.element.kind not in (FLOAT, "int"):
            raise ConfigError(f"quant.operands.{gemm}.{role}.granularity", "tile",
                              f"{spec.elem} takes its range per row or block, not per 2-D tile")
