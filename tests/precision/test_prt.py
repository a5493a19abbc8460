"""Precision range test: bound finding on closed-form curves, the CLI, and CPT runs using it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cprec.precision.range_test import find_bounds
from tests.helpers import FAST, read_summary, run_cli

PRT_KEYS = {"model", "dataset", "lower_bits", "upper_bits", "threshold", "steps", "gbitops", "curve"}


def curve(accs: dict[int, float]) -> list[dict]:
    return [{"bits": b, "train_acc": a} for b, a in sorted(accs.items())]


def test_lower_bound_is_first_gain_above_threshold() -> None:
    """Lower bound: first bits whose gain exceeds the threshold (upper: the fixed 8); None until decided."""
    c = curve({2: 0.10, 3: 0.12, 4: 0.50, 5: 0.60})
    assert find_bounds(c, 0.05, 8) == (4, 8)
    assert find_bounds(c[:2], 0.05, 8) == (None, None)  # not decided yet: keep raising


def test_auto_upper_bound_is_the_plateau() -> None:
    """Gains 0.38, 0.30 (above 0.05), then 0.01: the last precision that still helped is 5."""
    c = curve({3: 0.10, 4: 0.48, 5: 0.78, 6: 0.79, 7: 0.95})
    assert find_bounds(c, 0.05, "auto") == (4, 5)
    assert find_bounds(c[:3], 0.05, "auto") == (4, None)


def test_upper_bound_never_below_lower() -> None:
    """A fixed upper bound below the found lower bound is raised to the lower bound."""
    assert find_bounds(curve({6: 0.1, 7: 0.5}), 0.05, 4) == (7, 7)


@pytest.mark.slow
def test_prt_writes_result_and_cpt_run_uses_it(tmp_path: Path) -> None:
    """`cprec prt` writes outputs/prt/<model>-<dataset>.json (curve 2..lower, upper 8), prt.json and prt.png;
    a train run with schedule.bounds=prt then trains within that file's bounds and records their source."""
    out = run_cli(["prt", "model=mlp", "trainer.progress=false"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| bits | train_acc |" in out.stdout and "lower" in out.stdout
    shared = tmp_path / "outputs" / "prt" / "mlp-digits.json"
    result = json.loads(shared.read_text())
    assert PRT_KEYS <= set(result) and (result["model"], result["dataset"]) == ("mlp", "digits")
    assert 2 <= result["lower_bits"] <= result["upper_bits"] == 8
    assert [r["bits"] for r in result["curve"]] == list(range(2, result["lower_bits"] + 1))
    run_dirs = [p.parent for p in (tmp_path / "outputs" / "prt").rglob("prt.json")]
    assert len(run_dirs) == 1 and (run_dirs[0] / "prt.png").stat().st_size > 1000
    assert json.loads((run_dirs[0] / "prt.json").read_text())["curve"] == result["curve"]

    # a CPT run on the same model and dataset picks the bounds up
    shared.write_text(json.dumps({**result, "lower_bits": 4, "upper_bits": 6}))
    out = run_cli(["train", *FAST, "schedule.bounds=prt"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = read_summary(next(p.parent for p in (tmp_path / "outputs" / "train").rglob(".hydra")))
    assert (summary["bits_fw_min"], summary["bits_fw_max"]) == (4, 6)
    assert summary["bounds_source"] == f"prt:{Path('outputs/prt/mlp-digits.json')}"


@pytest.mark.parametrize("content, needle", [
    ("{not json", "unreadable"),
    ('{"model": "resnet20", "dataset": "digits", "lower_bits": 3, "upper_bits": 8}', "is for model=resnet20"),
    ('{"model": "mlp", "dataset": "digits", "lower_bits": 9, "upper_bits": 4}', "invalid bounds"),
])
def test_bad_prt_result_is_a_clear_error(tmp_path: Path, content: str, needle: str) -> None:
    """An unreadable, other-model or invalid PRT result makes train exit 2 with the reason and the
    `cprec prt` command to rerun, no traceback, and no run dir."""
    path = tmp_path / "outputs" / "prt" / "mlp-digits.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    out = run_cli(["train", *FAST], tmp_path)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
    assert "cprec prt model=mlp dataset=digits" in out.stderr
    assert not (tmp_path / "outputs" / "train").exists()


def test_schedule_preview_writes_plot(tmp_path: Path) -> None:
    """`cprec schedule` writes schedule.json (64000 steps, bits 3..8, relative cost < 0.07) and a plot."""
    out = run_cli(["schedule", "schedule=cpt_exp_rise_fall", "trainer.steps=64000",
                   "dataset=cifar10", "model=resnet74"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    preview = next((tmp_path / "outputs" / "schedule").rglob("schedule.json"))
    result = json.loads(preview.read_text())
    assert result["total_steps"] == 64000 and (result["bits_fw_min"], result["bits_fw_max"]) == (3, 8)
    assert 0 < result["relative_cost"] < 0.07
    assert (preview.parent / "schedule.png").stat().st_size > 1000


@pytest.mark.slow
def test_prt_sweep_exit_code_reads_prt_results(tmp_path: Path) -> None:
    """A PRT sweep is judged by each job's prt.json (PRT jobs write no summary.json)."""
    out = run_cli(["prt", "-m", "model=mlp", "seed=0,1", "trainer.progress=false"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = sorted((tmp_path / "outputs" / "prt-multirun").rglob("prt.json"))
    assert len(results) == 2
    assert all(json.loads(p.read_text())["status"] == "completed" for p in results)
