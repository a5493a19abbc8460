"""OperandSpec / LayerRecipe: parsing from plain dicts and strings, one-line validation."""

from __future__ import annotations

import pytest
import torch

from cprec.errors import ConfigError
from cprec.quant.elements import parse_element
from cprec.quant.recipe import GEMMS, LayerRecipe
from cprec.quant.scaled import fake_quantize
from cprec.quant.spec import FORMATS, OperandSpec, preset


def one_line_error(make, key: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        make()
    assert "\n" not in str(info.value) and info.value.key == key, str(info.value)
    return info.value


@pytest.mark.parametrize("fields,key", [
    ({"block_size": 0}, "block_size"),
    ({"block_size": -4}, "block_size"),
    ({"granularity": "tile", "tile": (128,)}, "tile"),
    ({"granularity": "tile", "tile": (1, 2, 3)}, "tile"),
    ({"granularity": "tile", "tile": "128"}, "tile"),
    ({"granularity": "tile", "tile": (0, 128)}, "tile"),
    ({"granularity": "tile"}, "tile"),
    ({"elem": "fixed8", "scale": "e8m0"}, "scale"),
    ({"elem": "fixed8", "scale": "e4m3"}, "scale"),
    ({"rule": "round"}, "rule"),
    ({"scale": "fp32", "granularity": "row", "rule": "rceil"}, "rule"),
    ({"elem": "e9m2"}, "elem"),
    ({"elem": "int1"}, "elem"),
    ({"elem": "fp8"}, "elem"),
    ({"granularity": "group"}, "granularity"),
    ({"scale": "e5m2"}, "scale"),
    ({"amax": "history"}, "amax"),
    ({"amax": "delayed"}, "amax"),  # delayed needs per-tensor fp32 scales
    ({"amax": "delayed", "granularity": "tensor", "scale": "fp32", "history": 0}, "history"),
    ({"rounding": "up"}, "rounding"),
    ({"hadamard": "yes"}, "hadamard"),
    ({"pow2": True}, "pow2"),  # e8m0 is a power of two already
    ({"elem": "int8", "granularity": "none"}, "granularity"),
])
def test_invalid_fields_raise_one_line_config_errors(fields: dict, key: str) -> None:
    err = one_line_error(lambda: OperandSpec(**fields), key)
    # the line names the field, the value given (None: a tile left out) and what is allowed
    assert err.value == fields.get(key) and err.allowed
    assert str(err) == f"{key}={fields.get(key)!r} is invalid: {err.allowed}"


def test_parse_prefixes_the_config_key() -> None:
    err = one_line_error(lambda: OperandSpec.parse({"block_size": 0}, "quant.forward.w"),
                         "quant.forward.w.block_size")
    assert str(err).startswith("quant.forward.w.block_size=0 is invalid:")
    one_line_error(lambda: OperandSpec.parse({"blocksize": 16}, "quant"), "quant.blocksize")
    one_line_error(lambda: OperandSpec.parse("mxfp3", "quant"), "quant")
    one_line_error(lambda: OperandSpec.parse(7, "quant"), "quant")


def test_parse_from_strings_and_dicts() -> None:
    assert OperandSpec.parse("nvfp4") == preset("nvfp4")
    spec = OperandSpec.parse({"format": "fp8_e4m3_1x128", "tile": "128x128", "pow2": True})
    assert spec.tile == (128, 128) and spec.scale == "fp32" and spec.pow2
    assert OperandSpec.parse({"elem": "e5m2", "tile": [1, 32], "granularity": "tile"}).tile == (1, 32)
    for name in FORMATS:  # every preset is a valid spec
        assert isinstance(preset(name), OperandSpec)


def test_elements() -> None:
    expected = {"e4m3": (448.0, 8), "e5m2": (57344.0, 15), "e2m3": (7.5, 2), "e3m2": (28.0, 4),
                "e2m1": (6.0, 2), "int8": (127 / 64, 0), "e4m4": (248.0, 7)}  # other e<E>m<M>: IEEE-style
    for name, (top, emax) in expected.items():
        elem = parse_element(name)
        assert (elem.max_value, elem.emax) == (top, emax), name
    assert parse_element("fixed4").kind == "fixed" and parse_element("int4").max_value == 7 / 4


def test_fake_quantize_rejects_bad_overrides_in_one_line() -> None:
    x = torch.randn(2, 32)
    errors = [one_line_error(lambda: fake_quantize(x, "mxfp8_e4m3", block_size=0), "block_size"),
              one_line_error(lambda: fake_quantize(x, "mxfp8_e4m3", scale_rule="nearest"), "rule"),
              one_line_error(lambda: fake_quantize(x, "fp8_e4m3_row", scale_rule="rceil"), "rule"),
              one_line_error(lambda: fake_quantize(x, "mxfp9"), "elem")]
    assert [e.value for e in errors] == [0, "nearest", "rceil", "mxfp9"]
    assert "e8m0" in errors[2].allowed  # the rule is refused for the scale it cannot apply to
    # the same overrides, valid, quantize: the refusals are about the values, not the call
    assert fake_quantize(x, "mxfp8_e4m3", block_size=16, scale_rule="rceil").shape == x.shape


def test_layer_recipe_from_a_dict() -> None:
    recipe = LayerRecipe.parse({
        "operand": "mxfp8_e4m3",
        "input_grad": {"dy": "mxfp8_e5m2"},
        "weight_grad": {"dy": {"rounding": "stochastic"}, "high_precision": True},
    })
    assert recipe.operand("forward", "w") == preset("mxfp8_e4m3")
    assert recipe.operand("input_grad", "dy") == preset("mxfp8_e5m2")
    assert recipe.weight_grad.first.rounding == "stochastic"
    assert [(g, r) for g, r, _ in recipe.operands()] == [
        (g, r) for g, roles in GEMMS.items() for r in roles]


def test_high_precision_gemm_has_no_operand_quantization() -> None:
    """torchao rowwise_with_gw_hp: the weight-gradient GEMM stays unquantized."""
    recipe = LayerRecipe.parse({"operand": "fp8_e4m3_row", "weight_grad": {"high_precision": True}})
    assert recipe.operand("weight_grad", "dy") is None and recipe.operand("weight_grad", "x") is None
    assert recipe.operand("forward", "x") == preset("fp8_e4m3_row")


def test_layer_recipe_validation() -> None:
    hadamard = {"format": "nvfp4", "hadamard": True}
    one_line_error(lambda: LayerRecipe.parse({"forward": {"x": hadamard}}), "forward.x.hadamard")
    one_line_error(lambda: LayerRecipe.parse({"weight_grad": {"x": hadamard}}),
                   "weight_grad.hadamard")
    ok = LayerRecipe.parse({"weight_grad": {"x": hadamard, "dy": hadamard}})
    assert ok.weight_grad.first.hadamard and ok.weight_grad.second.hadamard
    one_line_error(lambda: LayerRecipe.parse({"backward": {}}), "quant.backward")
    one_line_error(lambda: LayerRecipe.parse({"forward": {"dy": "nvfp4"}}), "quant.forward.dy")
    one_line_error(lambda: LayerRecipe.parse({"forward": {"high_precision": "no"}}),
                   "quant.forward.high_precision")
    one_line_error(lambda: LayerRecipe.parse({"forward": {"w": {"block_size": 0}}}),
                   "quant.forward.w.block_size")
