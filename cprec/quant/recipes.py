"""The scaled formats' config: ``quant.operand`` / ``quant.operands`` to a ``LayerRecipe``, and
what a scaled recipe cannot run with (checked up front: one line, exit 2, nothing written).

The named recipes are YAML files, conf/quant/<name>.yaml, each citing its source; this
module only reads the typed config (cprec/operand_config.py), so a recipe file and a
command-line override are the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from cprec.config import QuantConfig, TrainConfig, require
from cprec.errors import ConfigError
from cprec.quant.elements import FLOAT
from cprec.quant.recipe import GEMMS, GemmSpec, LayerRecipe
from cprec.quant.spec import OperandSpec

if TYPE_CHECKING:
    from cprec.precision.ladder import Ladder

SCALED = "scaled"
# schedule kinds a scaled recipe can follow alone: its widths are fixed by the formats; a
# ladder of formats (schedule.ladder) lets every other non-learned schedule move over them
STATIC_KINDS = ("fp32", "static")
LADDER_KINDS = ("cyclic", "deficit", "stepped")
FORWARD_ROLES = ("w", "x")  # the operands a forward ladder moves (in every GEMM they enter)
# what a rung sets of an operand; its rounding and Hadamard rule stay the recipe's
RUNG_KEEPS = ("rounding", "hadamard")


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
    # a ladder of formats lets a schedule move; the range test climbs its own (prt.ladder)
    name, formats = cfg.schedule.name, cfg.schedule.ladder is not None or cfg.prt.ladder is not None
    require(cfg.schedule.kind in STATIC_KINDS or formats and cfg.schedule.kind in LADDER_KINDS,
            "schedule", name, "quant.format=scaled has the fixed widths of its element formats; "
            "use schedule=static or schedule=fp32, or give a ladder of formats to move over "
            "(schedule.ladder=[mxfp4,mxfp6_e2m3,mxfp8])")
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


def _on_rung(spec: OperandSpec, rung: OperandSpec | None) -> OperandSpec:
    """An operand of the recipe on a rung: the rung's format, the recipe's rounding and Hadamard."""
    return spec if rung is None else replace(rung, **{k: getattr(spec, k) for k in RUNG_KEEPS})


def recipe_on_rungs(base: LayerRecipe, fw: OperandSpec | None, bw: OperandSpec | None) -> LayerRecipe:
    """``base`` with its weight and activation operands (all three GEMMs) at the forward
    rung ``fw`` and its output gradients at ``bw`` (None: the recipe's own); a GEMM the
    recipe keeps in high precision stays so."""
    gemms = {}
    for gemm, roles in GEMMS.items():
        spec = base.gemm(gemm)
        first, second = (_on_rung(s, fw if role in FORWARD_ROLES else bw)
                         for s, role in zip((spec.first, spec.second), roles))
        gemms[gemm] = GemmSpec(first, second, spec.high_precision)
    return LayerRecipe(**gemms)


def ladder_recipes(quant: QuantConfig, fw: Ladder | None,
                   bw: Ladder | None) -> dict[tuple[int, int], LayerRecipe] | None:
    """The recipe of every (forward, backward) rung pair of a ladder of formats, by widths
    (the bits a schedule sets on the layers); None without one."""
    if quant.format != SCALED or fw is None or not fw.formats:
        return None
    base = layer_recipe(quant)
    bw_rungs = {w: bw.spec(w) for w in bw.widths} if bw is not None else {recipe_widths(base)[1]: None}
    return {(wf, wb): recipe_on_rungs(base, fw.spec(wf), sb)
            for wf in fw.widths for wb, sb in bw_rungs.items()}
