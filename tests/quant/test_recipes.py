"""The named recipes (conf/quant/*.yaml) as LayerRecipes, their widths (the schedule's bits
and the cost ledger's) and the energy model's formats with their scales' storage."""

from __future__ import annotations

import pytest

from cprec.hardware.formats import FP32, layer_formats
from cprec.quant import format_bits
from cprec.quant.recipes import layer_recipe


@pytest.mark.parametrize("name, widths", [
    ("mxfp8", (8, 8)), ("mxfp6_e2m3", (6, 6)), ("mxfp6_e3m2", (6, 6)), ("mxfp4", (4, 4)),
    ("mxint8", (8, 8)), ("nvfp4", (4, 4)), ("fp8_tensorwise", (8, 8)), ("fp8_rowwise", (8, 8)),
    ("fp8_rowwise_gw_hp", (8, 32)), ("fp8_delayed", (8, 8)), ("fp8_blockwise", (8, 8)),
])
def test_recipe_widths(compose, name: str, widths: tuple[int, int]) -> None:
    """Element widths; a GEMM kept in high precision counts its gradient operand at 32."""
    cfg = compose([f"quant={name}", "schedule=static"])
    assert format_bits(cfg.quant) == widths


def test_recipes_say_what_their_sources_say(compose) -> None:
    nv = layer_recipe(compose(["quant=nvfp4", "schedule=static"]).quant)
    assert nv.forward.first.tile == (16, 16) and nv.forward.second.block_size == 16
    assert nv.weight_grad.first.hadamard and nv.weight_grad.second.hadamard
    assert nv.input_grad.second.rounding == "stochastic" and nv.forward.second.rounding == "nearest"
    delayed = layer_recipe(compose(["quant=fp8_delayed", "schedule=static"]).quant)
    assert delayed.forward.second.elem == "e4m3" and delayed.input_grad.second.elem == "e5m2"
    assert delayed.forward.second.history == 1024 and delayed.forward.second.amax == "delayed"
    gw = layer_recipe(compose(["quant=fp8_rowwise_gw_hp", "schedule=static"]).quant)
    assert gw.weight_grad.high_precision and gw.input_grad.first.granularity == "tensor"
    tuned = compose(["quant=mxfp8", "schedule=static", "quant.operands.weight_grad.dy.elem=e5m2"])
    recipe = layer_recipe(tuned.quant)
    assert recipe.weight_grad.first.elem == "e5m2" and recipe.input_grad.second.elem == "e4m3"


def test_energy_formats_carry_the_scales_storage(compose) -> None:
    """MX: 8 bits per 32 elements; NVFP4: 8 per 16; a per-tensor fp32 scale: free."""
    mx = layer_formats(compose(["quant=mxfp4", "schedule=static"]).quant, 4, 4)
    assert (mx[0].bits, mx[0].scale_bits) == (4, 0.25)
    nv = layer_formats(compose(["quant=nvfp4", "schedule=static"]).quant, 4, 4)
    assert nv[0].scale_bits == 0.5
    tensorwise = layer_formats(compose(["quant=fp8_tensorwise", "schedule=static"]).quant, 8, 8)
    assert tensorwise[1].exp == 5 and tensorwise[1].scale_bits == 0.0
    assert layer_formats(compose(["quant=mxfp4", "schedule=static"]).quant, 32, 32) == (
        layer_formats(compose(["quant=fixed"]).quant, 32, 32)) == (FP32, FP32)
