"""`cprec report` compares every group with its baseline (CI, Welch p-value, cost) and gives
the papers' figures a verdict; hand-made run dirs, scipy as the oracle."""

from __future__ import annotations

import json

import pytest

from cprec.cli.report import main_cli
from tests.report.test_report import make_run

STATIC = [0.921, 0.915, 0.930, 0.925, 0.918]
CPT = [0.911, 0.920, 0.905, 0.915, 0.909]


def groups(root) -> dict:
    return {g["group"]: g for g in json.loads((root / "report" / "report.json").read_text())["groups"]}


def test_each_group_gets_a_ci_and_its_difference_from_the_baseline(tmp_path, capsys) -> None:
    stats = pytest.importorskip("scipy.stats")
    root = tmp_path / "sweep"
    for schedule, accs, cost in (("static", STATIC, 250.0), ("cpt_cosine", CPT, 150.0)):
        for seed, acc in enumerate(accs):
            make_run(root / f"{schedule}-{seed}", schedule, seed,
                     {"final_acc": acc, "best_acc": acc + 0.01, "gbitops": cost})
    assert main_cli([str(root)]) == 0
    table = capsys.readouterr().out
    g = groups(root)
    cpt, static = g["schedule=cpt_cosine"], g["schedule=static"]
    ref = stats.t.interval(0.95, 4, loc=sum(CPT) / 5, scale=stats.sem(CPT))
    assert (cpt["final_acc_ci_lo"], cpt["final_acc_ci_hi"]) == pytest.approx(ref)
    assert cpt["baseline"] == "schedule=static" and static["baseline"] is None
    welch = stats.ttest_ind(CPT, STATIC, equal_var=False)
    assert cpt["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    ci = welch.confidence_interval(0.95)
    assert (cpt["diff_ci_lo"], cpt["diff_ci_hi"]) == pytest.approx((100 * ci.low, 100 * ci.high))
    assert cpt["cost_diff"] == -100.0 and cpt["cost_diff_pct"] == pytest.approx(-40.0)
    assert cpt["n"] == 5 and cpt["note"] == ""
    assert "## Against the baseline" in table and f"{welch.pvalue:.3f}" in table
    assert f"[{100 * ci.low:+.2f}, {100 * ci.high:+.2f}]" in table
    assert (root / "report" / "accuracy_vs_gbitops.png").stat().st_size > 0


def test_few_runs_are_noted_and_the_paper_gets_a_verdict(tmp_path, capsys) -> None:
    paper = {"source": "CPT (Fu et al., 2021)",
             "results": {"3-8/8": {"vs": "8/8", "acc_gain": 0.91, "cost_saving": 36.67}}}
    extra = ("experiment=cifar100_resnet74",)
    cases = {"consistent": [0.712, 0.705, 0.718], "below": [0.690, 0.692, 0.691],
             "above": [0.750, 0.752, 0.751]}
    for name, accs in cases.items():
        root = tmp_path / name
        for seed, (base, acc) in enumerate(zip([0.700, 0.702, 0.701], accs)):
            make_run(root / f"s{seed}", "static", seed, {"best_acc": base, "gbitops": 300.0}, extra,
                     paper=paper)
            make_run(root / f"c{seed}", "cpt_cosine", seed, {"best_acc": acc, "gbitops": 190.0}, extra,
                     paper=paper)
        assert main_cli([str(root), "--no-plots"]) == 0
        cpt = groups(root)["schedule=cpt_cosine"]
        assert cpt["verdict"] == name, (name, cpt["paper_ci"])
        assert cpt["baseline"] == "schedule=static" and cpt["note"] == ""
    assert "| verdict |" in capsys.readouterr().out
    root = tmp_path / "two"
    for seed in range(2):
        make_run(root / f"s{seed}", "static", seed, {"final_acc": 0.9 + seed / 100})
        make_run(root / f"c{seed}", "cpt_cosine", seed, {"final_acc": 0.89 + seed / 100})
    make_run(root / "c2", "cpt_cosine", 2, {"final_acc": 0.9})
    assert main_cli([str(root), "--no-plots"]) == 0
    assert groups(root)["schedule=cpt_cosine"]["note"].startswith("n < 3")


def test_tracker_copies_of_run_files_are_not_runs(tmp_path) -> None:
    """W&B's offline run and the default MLflow store keep copies of summary.json: not runs."""
    run = make_run(tmp_path / "sweep" / "0", "static", 0, {})
    store = tmp_path / "sweep" / "mlruns" / "artifacts" / "x"
    for copy in (run / "wandb" / "offline-run-1" / "files", store):
        copy.mkdir(parents=True)
        (copy / "summary.json").write_text((run / "summary.json").read_text())
    assert main_cli([str(tmp_path / "sweep"), "--no-plots"]) == 0
    assert [g["runs"] for g in groups(tmp_path / "sweep").values()] == [1]
