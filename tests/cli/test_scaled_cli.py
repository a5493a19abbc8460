"""`cprec train quant=<scaled recipe>` end to end in a subprocess, and the recipes' refusals:
one line, exit 2, no run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli

TINY = ["model=mlp", "trainer.steps=4", "trainer.eval_every=2", "trainer.progress=false"]


def test_mxfp8_trains_end_to_end_with_telemetry(tmp_path: Path) -> None:
    out = run_cli(["train", "quant=mxfp8", "schedule=static", "quant.telemetry=true", *TINY,
                   "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["quant_format"] == "scaled"
    assert summary["bits_fw_max"] == 8 and summary["bits_bw_max"] == 8
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, layer = records[-1]["quant_telemetry"]["1"], records[-1]["quant_telemetry"]["3"]
    assert set(first) == {"forward.w", "forward.x", "weight_grad.dy", "weight_grad.x"}  # no dX
    assert set(layer) == {"forward.w", "forward.x", "input_grad.w", "input_grad.dy",
                          "weight_grad.dy", "weight_grad.x"}
    assert 15 < layer["forward.w"]["sqnr_db"] < 40  # E4M3's 3 mantissa bits: ~30 dB
    assert set(summary["quant_sqnr_db"]) == set(layer)


@pytest.mark.parametrize("args, needle", [
    (["quant=nvfp4"], "schedule='cpt_cosine' is invalid: quant.format=scaled has the fixed widths"),
    (["quant=mxfp8", "schedule=static", "loss_scale=dynamic"], "loss_scale='dynamic' is invalid"),
    (["quant=fp8_blockwise", "schedule=static"], "quant.operands.forward.w.tile='128x128' is invalid"),
    (["quant=mxfp4", "schedule=static", "quant.operands.weight_grad.dy.rounding=sometimes"],
     "quant.operands.weight_grad.dy.rounding='sometimes' is invalid"),
    (["quant=mxfp4", "schedule=static", "quant.operand.block_size=0"],
     "quant.operand.block_size=0 is invalid"),
    (["quant=mxfp8", "schedule=static", "quant.operands.forward.x.hadamard=true"],
     "quant.operands.forward.x.hadamard=True is invalid"),
])
def test_recipes_that_cannot_apply_are_refused_in_one_line(tmp_path: Path, args: list[str],
                                                             needle: str) -> None:
    out = run_cli(["train", *args, *TINY], tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*"))


def test_the_range_test_refuses_a_scaled_recipe(tmp_path: Path) -> None:
    out = run_cli(["prt", "quant=mxfp8", "schedule=static", "model=mlp"], tmp_path)
    assert out.returncode == 2 and "quant.format='scaled' is invalid" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()
