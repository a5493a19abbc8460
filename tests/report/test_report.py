"""`cprec report` on hand-made run dirs: grouping, statistics, failures, plots, errors.

Fast (no training); tests/cli/test_sweep.py runs the same report on a real sweep.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import yaml

from cprec.cli.report import main_cli
from cprec.report.tables import Group, Run, mark_pareto, mean_std

SCHEDULES = {
    "static": {"name": "static", "kind": "static", "bits": 8, "bw_bits": 8},
    "cpt_cosine": {"name": "cpt_cosine", "kind": "cyclic", "min_bits": 3, "max_bits": 8,
                   "bw_bits": 8, "cycles": 4, "profile": "cosine", "shape": "growth"},
}


def make_run(path: Path, schedule: str, seed: int, summary: dict | None = None,
             extra: tuple[str, ...] = (), metrics: bool = True, paper: dict | None = None) -> Path:
    """A run dir shaped like `cprec train` leaves it (DESIGN.md contract); ``paper`` is a
    preset's reported figures in its config."""
    (path / ".hydra").mkdir(parents=True)
    overrides = [f"schedule={schedule}", f"seed={seed}", "trainer.progress=false", *extra]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"seed": seed, "model": {"name": "resnet20"}, "dataset": {"name": "digits"},
              "schedule": SCHEDULES[schedule], **({"paper": paper} if paper else {})}
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "train.log").write_text("")
    lo, hi = (8, 8) if schedule == "static" else (3, 8)
    base = {"status": "completed", "final_acc": 0.9, "best_acc": 0.92, "gbitops": 100.0,
            "relative_cost": 0.06, "train_time_s": 1.0, "seed": seed, "model": "resnet20",
            "dataset": "digits", "schedule": schedule, "steps": 40, "total_steps": 40,
            "bits_fw_min": lo, "bits_fw_max": hi, "bits_bw": 8}
    if summary is not None:
        (path / "summary.json").write_text(json.dumps({**base, **summary}))
    if metrics:
        records = [{"step": s, "bits_fw": hi, "bits_bw": 8, "test_acc": 0.5 + s / 100,
                    "train_acc": 0.4 + s / 100} for s in (10, 20, 30, 40)]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> tuple[Path, dict]:
    """2 schedules x 3 seeds with known numbers."""
    root = tmp_path / "sweep"
    values = {}
    n = 0
    for schedule, cost in (("static", 250.0), ("cpt_cosine", 150.0)):
        for seed in range(3):
            acc = 0.9 + 0.01 * seed + (0.02 if schedule == "static" else 0.0)
            s = {"final_acc": acc, "best_acc": acc + 0.005, "gbitops": cost,
                 "relative_cost": cost / 4000, "train_time_s": 1.0 + seed}
            values.setdefault(schedule, []).append(s)
            make_run(root / f"{n}_schedule={schedule},seed={seed}", schedule, seed, s)
            n += 1
    return root, values


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_groups_by_overrides_and_matches_mean_and_sample_std(sweep, capsys) -> None:
    """Runs group by their overrides except seed; each group's mean and sample std (ddof=1) match
    statistics, and the printed table, report.csv and report.md show them."""
    root, values = sweep
    assert main_cli([str(root)]) == 0
    table = capsys.readouterr().out
    groups = {g["group"]: g for g in read_report(root / "report")["groups"]}
    assert set(groups) == {"schedule=static", "schedule=cpt_cosine"}  # seed does not split
    for schedule, runs in values.items():
        g = groups[f"schedule={schedule}"]
        assert (g["runs"], g["completed"]) == (3, 3)
        for key in ("final_acc", "best_acc", "gbitops", "relative_cost", "train_time_s"):
            xs = [r[key] for r in runs]
            assert g[f"{key}_mean"] == pytest.approx(statistics.mean(xs))
            assert g[f"{key}_std"] == pytest.approx(statistics.stdev(xs))  # ddof=1
    assert "| schedule=static | 3/3 | 93.00 ± 1.00 |" in table
    assert "sample std (ddof=1)" in table
    csv_lines = (root / "report" / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("group,runs,completed,failed,diverged,interrupted,missing,damaged,other")
    assert len(csv_lines) == 3
    assert (root / "report" / "report.md").read_text() == table.split("report written")[0]


def test_pareto_front() -> None:
    """A group is on the front unless another is no costlier, no less accurate, and better in one of them."""
    def group(label: str, cost: float, acc: float) -> Group:
        summary = {"status": "completed", "final_acc": acc, "gbitops": cost}
        return Group(label, [Run(Path(label), summary, {"schedule": label})])

    groups = [group("cheap", 1, 0.80), group("mid", 2, 0.90), group("dominated", 3, 0.85),
              group("best", 4, 0.95), group("tie_costlier", 5, 0.95)]
    mark_pareto(groups)
    assert [g.label for g in groups if g.pareto] == ["cheap", "mid", "best"]


def test_single_run_has_zero_std_and_schedule_label(tmp_path, capsys) -> None:
    """A single run dir is labelled by its schedule with std 0.0; mean_std of no values is (None, None)."""
    run = make_run(tmp_path / "run", "cpt_cosine", 0, {"final_acc": 0.8})
    assert main_cli([str(run), "--no-plots"]) == 0
    (g,) = read_report(run / "report")["groups"]
    assert g["group"] == "cpt_cosine"
    assert (g["final_acc_mean"], g["final_acc_std"]) == (0.8, 0.0)
    assert mean_std([]) == (None, None)


def test_failed_diverged_and_unfinished_runs_are_counted_and_listed(tmp_path, capsys) -> None:
    """Runs that did not complete are counted by status per group and listed with their reason; means use
    completed runs only, and --out writes the report there instead of into the sweep."""
    root = tmp_path / "sweep"
    make_run(root / "0_ok", "static", 0, {"final_acc": 0.9})
    make_run(root / "1_ok", "static", 1, {"final_acc": 0.8})
    make_run(root / "2_failed", "static", 2, {"status": "failed", "final_acc": None,
                                              "error": "trainer.device='cuda' is invalid"},
             metrics=False)
    make_run(root / "3_diverged", "cpt_cosine", 0, {"status": "diverged", "final_acc": None,
                                                    "steps": 20})
    make_run(root / "4_killed", "cpt_cosine", 1, None)  # no summary.json at all
    make_run(root / "5_interrupted", "cpt_cosine", 2, {"status": "interrupted", "steps": 12})
    out = tmp_path / "elsewhere"
    assert main_cli([str(root), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    report = read_report(out)
    groups = {g["group"]: g for g in report["groups"]}
    static, cpt = groups["schedule=static"], groups["schedule=cpt_cosine"]
    assert (static["runs"], static["completed"], static["failed"]) == (3, 2, 1)
    assert static["final_acc_mean"] == pytest.approx(0.85)  # over the completed runs only
    assert (cpt["runs"], cpt["completed"], cpt["diverged"], cpt["missing"]) == (3, 0, 1, 1)
    assert cpt["interrupted"] == 1
    assert cpt["final_acc_mean"] is None and not cpt["pareto"]
    assert "| schedule=static | 2/3 (1 failed) |" in table
    assert "| schedule=cpt_cosine | 0/3 (1 diverged, 1 interrupted, 1 missing) | - |" in table
    assert "runs that did not complete (4):" in table
    assert "- failed: 2_failed: trainer.device='cuda' is invalid" in table
    assert "- diverged: 3_diverged: loss not finite by step 20 of 40" in table
    assert "- interrupted: 5_interrupted: stopped at step 12 of 40; continue it with: " in table
    assert "- missing: 4_killed: no summary.json" in table
    assert {r["status"] for r in report["runs"]} == {"completed", "failed", "diverged", "missing",
                                                     "interrupted"}
    assert not (root / "report").exists()


def test_report_across_several_dirs_labels_what_differs(tmp_path, capsys) -> None:
    """Runs from several dirs are grouped by the override that differs (optim.lr), not by seed."""
    make_run(tmp_path / "a" / "0", "static", 0, {}, extra=("optim.lr=0.1",))
    make_run(tmp_path / "b" / "0", "static", 1, {}, extra=("optim.lr=0.1",))
    make_run(tmp_path / "b" / "1", "static", 0, {}, extra=("optim.lr=0.05",))
    assert main_cli([str(tmp_path / "a"), str(tmp_path / "b"), "--no-plots"]) == 0
    groups = {g["group"]: g["runs"] for g in read_report(tmp_path / "a" / "report")["groups"]}
    assert groups == {"optim.lr=0.1": 2, "optim.lr=0.05": 1}


def test_pngs_are_valid_and_not_blank(sweep, capsys) -> None:
    """The accuracy-vs-GBitOPs plot and one distinct plot per run are valid, >200 px, non-blank PNGs."""
    root, _ = sweep
    assert main_cli([str(root)]) == 0
    report = read_report(root / "report")
    pngs = [root / "report" / "accuracy_vs_gbitops.png"]
    pngs += [root / "report" / r["plot"] for r in report["runs"]]
    assert len(pngs) == 7 and len({p.name for p in pngs}) == 7
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = mpimg.imread(png)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert pixels[..., :3].std() > 0.05, f"{png} looks blank"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cprec.cli", "report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "cprec: error: nowhere does not exist"),
    (["empty"], "cprec: error: no runs (summary.json) found below empty"),
    ([], "cprec: error: the following arguments are required: DIR"),
    (["empty", "--bogus"], "cprec: error: unrecognized arguments: --bogus"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, args, message) -> None:
    """Each user error exits 2 with exactly one stderr line, no stdout, and no report dir written."""
    (tmp_path / "empty").mkdir()
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert result.stdout == ""
    assert not (tmp_path / "empty" / "report").exists()


def test_report_does_not_import_torch(tmp_path) -> None:
    """`cprec report` runs to completion without ever importing torch."""
    make_run(tmp_path / "run", "static", 0, {})
    code = ("import sys; from cprec.cli.report import main_cli; "
            f"assert main_cli([{str(tmp_path / 'run')!r}]) == 0; "
            "assert 'torch' not in sys.modules, 'cprec report imported torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_paper_figures_stand_beside_the_measured_ones(tmp_path, capsys) -> None:
    """Runs from a preset that carries its paper's figures get a `paper` column (gain over the
    named baseline as reported) and a `measured` one (the same from this report's runs: best
    accuracy in points, GBitOPs saving in percent); the baseline group has neither."""
    paper = {"source": "CPT (Fu et al., 2021), CIFAR-100 figure",
             "results": {"3-8/8": {"vs": "8/8", "acc_gain": 0.91, "cost_saving": 36.67}}}
    root = tmp_path / "sweep"
    extra = ("experiment=cifar100_resnet74",)
    for seed in range(2):
        make_run(root / f"s{seed}", "static", seed, {"best_acc": 0.70 + 0.01 * seed, "gbitops": 300.0},
                 extra, paper=paper)
        make_run(root / f"c{seed}", "cpt_cosine", seed,
                 {"best_acc": 0.71 + 0.01 * seed, "gbitops": 190.0}, extra, paper=paper)
    assert main_cli([str(root), "--no-plots"]) == 0
    groups = {g["group"]: g for g in read_report(root / "report")["groups"]}
    assert groups["schedule=cpt_cosine"]["paper"] == "+0.91 pts, -36.67% cost vs 8/8"
    assert groups["schedule=cpt_cosine"]["measured"] == "+1.00 pts, -36.67% cost vs 8/8"
    assert groups["schedule=static"]["paper"] == groups["schedule=static"]["measured"] == ""
    table = capsys.readouterr().out
    assert "| paper | measured |" in table and "Sources: CPT (Fu et al., 2021), CIFAR-100 figure" in table
    make_run(tmp_path / "alone" / "c0", "cpt_cosine", 0, {}, extra, paper=paper)
    assert main_cli([str(tmp_path / "alone"), "--no-plots"]) == 0
    (row,) = read_report(tmp_path / "alone" / "report")["groups"]
    assert row["measured"] == "no 8/8 runs in this report"
    make_run(tmp_path / "six" / "c0", "cpt_cosine", 0, {"bits_fw_max": 6, "bits_bw": 6}, extra,
             paper=paper)
    assert main_cli([str(tmp_path / "six"), "--no-plots"]) == 0
    (row,) = read_report(tmp_path / "six" / "report")["groups"]
    assert row["paper"] == ""  # 3-6/6 is not what the paper figure is about


def test_reports_without_paper_figures_keep_their_columns(tmp_path, capsys) -> None:
    """Runs from no preset: the table has no paper columns at all."""
    make_run(tmp_path / "r" / "a", "static", 0, {})
    assert main_cli([str(tmp_path / "r"), "--no-plots"]) == 0
    assert "| paper |" not in capsys.readouterr().out


def test_loss_scaled_runs_show_underflow_and_skipped_steps(tmp_path, capsys) -> None:
    """Runs whose summaries carry loss-scaling telemetry get `underflow rate` and `skipped steps`
    columns (mean ± std over seeds); a group without them shows '-'."""
    root = tmp_path / "sweep"
    for seed, (under, skipped) in enumerate([(0.1, 2), (0.3, 4)]):
        make_run(root / f"d{seed}", "static", seed, {"underflow_rate": under, "skipped_steps": skipped},
                 ("loss_scale=dynamic",))
    make_run(root / "n0", "static", 0, {})
    assert main_cli([str(root), "--no-plots"]) == 0
    table = capsys.readouterr().out
    assert "| underflow rate | skipped steps |" in table
    groups = {g["group"]: g for g in read_report(root / "report")["groups"]}
    dyn = groups["loss_scale=dynamic"]
    assert dyn["underflow_rate_mean"] == pytest.approx(0.2) and dyn["skipped_steps_mean"] == 3
    assert "| 0.2 ± 0.141 | 3 ± 1.41 |" in table
