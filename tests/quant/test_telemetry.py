"""Telemetry of the scaled formats in closed form: SQNR, flushed and saturated fractions,
scale range, their window and run means, and the report's heatmap."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from cprec.quant.scaled import quantize_with_scales
from cprec.quant.spec import preset
from cprec.quant.telemetry import OperandTelemetry, mean_over_layers
from cprec.report.format_plots import sqnr_heatmap


def test_figures_of_one_window_in_closed_form() -> None:
    """x = [4, 3, 0.001, 0, 1000] against q = [4, 2, 0, 0, 448]: noise 1 + 1e-6 + 552^2."""
    x = torch.tensor([4.0, 3.0, 0.001, 0.0, 1000.0])
    q = torch.tensor([4.0, 2.0, 0.0, 0.0, 448.0])
    t = OperandTelemetry()
    t.add("forward.x", x, q, x.reshape(1, -1), torch.tensor([[1.0]]), 448.0)
    out = t.fold()["forward.x"]
    signal, noise = 16 + 9 + 1e-6 + 1e6, 1 + 1e-6 + 552.0 ** 2
    assert math.isclose(out["sqnr_db"], 10 * math.log10(signal / noise), rel_tol=1e-6)
    assert out["flushed"] == 1 / 4  # 0.001 of the four nonzeros
    assert out["saturated"] == 1 / 5  # 1000 > 448 * 1
    assert out["scale_min"] == out["scale_max"] == 1.0
    assert t.fold() == {}  # a new window
    assert math.isclose(t.means()["forward.x"]["flushed"], 0.25)


def test_mx_scales_and_saturation_from_the_quantizer() -> None:
    """E4M3 block with amax 500 (floor rule): X = 1, 500 > 448 saturates, the rest do not."""
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 500.0, 3.0
    q, groups, scale = quantize_with_scales(x, preset("mxfp8_e4m3"), -1)
    t = OperandTelemetry()
    t.add("forward.w", x, q, groups, scale, 448.0)
    out = t.fold()["forward.w"]
    assert out["saturated"] == 1 / 32 and out["scale_min"] == 1.0
    assert math.isclose(out["sqnr_db"], 10 * math.log10((500 ** 2 + 9) / 52 ** 2), rel_tol=1e-6)


def test_mean_over_layers_and_the_heatmap(tmp_path: Path) -> None:
    per_layer = {"a": {"forward.x": {"sqnr_db": 20.0}}, "b": {"forward.x": {"sqnr_db": 30.0},
                                                         "forward.w": {"sqnr_db": None}}}
    assert mean_over_layers(per_layer) == {"forward.x": 25.0}
    assert sqnr_heatmap({"quant_telemetry": per_layer, "seed": 0}, "run", tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    assert not sqnr_heatmap({}, "run", tmp_path / "none.png")
