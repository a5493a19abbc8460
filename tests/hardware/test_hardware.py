"""Energy and modeled device time: closed forms on a one-layer model, the data type each
format runs as on each device, and the config's one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cprec.config import QuantConfig
from cprec.cost import CostLedger, LayerShape, measure_shapes
from cprec.hardware.devices import DEVICES, DTYPES, gemm_dtype
from cprec.hardware.energy import mac_energy_pj, traffic_energy_pj
from cprec.hardware.formats import FP32, OperandFormat, fixed, holds, layer_formats
from cprec.hardware.model import run_hardware_cost
from tests.helpers import FAST, read_summary, run_cli

E4M3, E2M1 = DTYPES["fp8_e4m3"], DTYPES["fp4_e2m1"]


def test_formats_hold_exactly_the_integers_and_floats_they_represent() -> None:
    # E2M1 = {0, .5, 1, 1.5, 2, 3, 4, 6}: -4..3 (3 bits) fits, -8..7 (4 bits) does not
    assert holds(E2M1, fixed(3)) and not holds(E2M1, fixed(4))
    assert holds(E4M3, fixed(5)) and not holds(E4M3, fixed(6))  # 3 mantissa bits: ints to 16
    assert holds(DTYPES["int8"], fixed(8)) and not holds(DTYPES["int8"], fixed(9))
    assert holds(DTYPES["bf16"], E4M3) and not holds(E4M3, DTYPES["bf16"])
    assert not holds(DTYPES["int8"], E4M3) and holds(FP32, fixed(25)) and not holds(DTYPES["tf32"], FP32)
    assert [DTYPES[d].max_value for d in ("fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1")] == \
        [448.0, 57344.0, 7.5, 28.0, 6.0]  # OCP's and IEEE's largest finite values


@pytest.mark.parametrize(("device", "bits", "dtype"), [
    ("h100", 3, "int8"), ("h100", 8, "int8"), ("h100", 32, "fp32"), ("h100", 12, "fp16"),
    ("b200", 3, "fp4_e2m1"), ("b200", 4, "int8"), ("a100", 3, "int8"), ("mi300x", 6, "int8"),
])
def test_each_fixed_point_gemm_runs_as_the_fastest_type_that_holds_it(device: str, bits: int,
                                                                      dtype: str) -> None:
    assert gemm_dtype(DEVICES[device], fixed(bits), fixed(bits)) == dtype


def test_float_operands_map_to_float_types() -> None:
    e2m3 = OperandFormat("float", 6, 2, 3)
    assert gemm_dtype(DEVICES["b200"], e2m3, e2m3) in ("fp6_e2m3", "fp8_e4m3")
    assert gemm_dtype(DEVICES["h100"], e2m3, e2m3) == "fp8_e4m3"
    assert gemm_dtype(DEVICES["a100"], E4M3, E4M3) in ("fp16", "bf16")  # no FP8 on an A100
    q = QuantConfig(format="float", exp_bits=4, man_bits=3, error_exp_bits=5, error_man_bits=2)
    assert layer_formats(q, 8, 8) == (OperandFormat("float", 8, 4, 3), OperandFormat("float", 8, 5, 2))
    assert layer_formats(QuantConfig(), 4, 8) == (fixed(4), fixed(8))
    assert layer_formats(QuantConfig(), 32, 32) == (FP32, FP32)


def test_mac_energy_follows_horowitzs_table_and_its_scaling_rules() -> None:
    assert mac_energy_pj(fixed(8), fixed(8)) == pytest.approx(0.2 + 0.1)
    assert mac_energy_pj(fixed(4), fixed(8)) == pytest.approx(0.2 * 32 / 64 + 0.1)
    assert mac_energy_pj(FP32, FP32) == pytest.approx(3.7 + 0.9)
    fp16 = DTYPES["fp16"]
    assert mac_energy_pj(fp16, fp16) == pytest.approx(1.1 + 0.9)  # the fit goes through both points
    assert traffic_energy_pj(64) == pytest.approx(1300 + 100)


def one_linear_run() -> tuple[CostLedger, dict[str, LayerShape]]:
    model = nn.Sequential(nn.Linear(16, 4))
    shapes = measure_shapes(model, torch.zeros(1, 16))
    ledger = CostLedger({"0": 64})
    ledger.add({"0": (4, 8)}, 10)  # two steps of 10 samples at 4/8 bits
    ledger.add({"0": (4, 8)}, 10)
    return ledger, shapes


def test_a_one_layer_runs_energy_and_time_are_the_hand_computed_closed_forms() -> None:
    ledger, shapes = one_linear_run()
    assert shapes == {"0": LayerShape(macs=64, weights=64, inputs=16, outputs=4)}
    out = run_hardware_cost(ledger, shapes, QuantConfig(), steps=2, devices=["h100", "b200"])
    b = 10  # per step: Y = W X, dX = W^T dY, dW = dY X^T, each 640 MACs
    mac = {"fw": 0.2 * 16 / 64 + 0.1, "bw": 0.2 * 32 / 64 + 0.1}
    compute = b * 64 * (mac["fw"] + 2 * mac["bw"])
    bits = ((64 * 4 + b * 16 * 4 + b * 4 * 32) + (b * 4 * 8 + 64 * 4 + b * 16 * 32)
            + (b * 4 * 8 + b * 16 * 4 + 64 * 32))
    assert out["energy_j"] == pytest.approx(2 * (compute + bits * (1300 + 100) / 64) * 1e-12, rel=1e-12)
    h100 = DEVICES["h100"]  # every GEMM as INT8: operands moved at 8 bits, results at 32
    moved = [(64 + b * 16) * 8 + b * 4 * 32, (b * 4 + 64) * 8 + b * 16 * 32, (b * 4 + b * 16) * 8 + 64 * 32]
    step = sum(max(2 * b * 64 / h100.peak["int8"], m / 8 / h100.bandwidth) for m in moved)
    assert out["modeled_time_s.h100"] == pytest.approx(2 * step, rel=1e-12)
    assert math.isfinite(out["modeled_time_s.b200"]) and out["modeled_time_s.b200"] > 0


@pytest.mark.slow
def test_train_writes_energy_and_modeled_times_and_cpt_saves_no_h100_time(tmp_path) -> None:
    """CPT 3..8/8 vs static 8/8: fewer BitOPs and less energy, the same modeled H100 time
    (every <= 8-bit GEMM is an INT8 GEMM there), less B200 time (3-bit forwards in FP4)."""
    summaries = {}
    for schedule in ("cpt_cosine", "static"):
        out = run_cli(["train", *FAST, f"schedule={schedule}", "model=lenet", "cost.devices=[h100,b200]",
                       f"hydra.run.dir={schedule}"], cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        summaries[schedule] = read_summary(tmp_path / schedule)
    cpt, static = summaries["cpt_cosine"], summaries["static"]
    assert cpt["gbitops"] < static["gbitops"] and cpt["energy_j"] < static["energy_j"]
    assert cpt["modeled_time_s.h100"] == pytest.approx(static["modeled_time_s.h100"], rel=1e-12)
    assert cpt["modeled_time_s.b200"] < static["modeled_time_s.b200"]


def test_an_unknown_device_is_one_line(tmp_path) -> None:
    out = run_cli(["train", *FAST, "cost.devices=[h100,tpu9]"], cwd=tmp_path)
    assert out.returncode == 2 and "cost.devices='tpu9' is invalid: choose one of" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()
