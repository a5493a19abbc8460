"""Real sweeps through the dispatcher (`cprec train -m`), their launchers, and their report.

Tiny runs (20 steps on digits) in a subprocess with cwd=tmp, so outputs land in tmp.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow

TINY = ["model=mlp", "trainer.steps=20", "trainer.eval_every=10", "trainer.progress=false",
        "schedule.cycles=2"]


def cprec(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, kernels not compiled (speed is not what these tests check)."""
    return run_cli(list(args), cwd=cwd, timeout=300)


def only_sweep_dir(cwd: Path) -> Path:
    (sweep,) = (cwd / "outputs" / "train-multirun").glob("*/*")
    return sweep


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name.split("_")[0]))


def summaries(sweep: Path) -> list[dict]:
    return [json.loads((d / "summary.json").read_text()) for d in job_dirs(sweep)]


def assert_png_not_blank(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = mpimg.imread(path)
    assert pixels[..., :3].std() > 0.05, f"{path} looks blank"


@pytest.fixture(scope="module")
def sweep4(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """Two schedules x two seeds, in the default sweep location."""
    cwd = tmp_path_factory.mktemp("sweep4")
    result = cprec("train", "-m", "schedule=static,cpt_cosine", "seed=0,1", "trainer.threads=1",
                   *TINY, cwd=cwd)
    return only_sweep_dir(cwd), result


def test_sweep_runs_every_job_into_readable_dirs(sweep4) -> None:
    """A 2x2 sweep completes into numbered dirs named by schedule and seed (not by neutral keys)
    and ends with one line per job and the report command."""
    sweep, result = sweep4
    assert result.returncode == 0, result.stderr[-3000:]
    names = [d.name for d in job_dirs(sweep)]
    assert len(names) == 4
    for num, (schedule, seed) in enumerate([("static", 0), ("static", 1), ("cpt_cosine", 0),
                                            ("cpt_cosine", 1)]):
        assert names[num].startswith(f"{num}_")
        assert f"schedule={schedule}" in names[num].split(",") and f"seed={seed}" in names[num]
        assert "trainer.progress" not in names[num]
    assert [s["status"] for s in summaries(sweep)] == ["completed"] * 4
    assert (sweep / "multirun.yaml").is_file()
    # it ends with one line per job (the overrides that differ) and the next command
    lines = result.stdout.splitlines()[-6:]
    assert lines[0] == f"sweep {sweep.relative_to(sweep.parents[3])}: 4 job(s)"
    for num, (line, s) in enumerate(zip(lines[1:5], summaries(sweep))):
        assert line.startswith(f"{num} schedule={s['schedule']} seed={s['seed']} ")
        assert f"  completed  final acc {s['final_acc']:.4f}  best {s['best_acc']:.4f}  " in line
    assert lines[5] == f"next: cprec report {sweep.relative_to(sweep.parents[3])}"


def test_report_of_real_sweep_equals_the_summaries(sweep4) -> None:
    """`cprec report` on a real sweep shows each group's mean and sample std of its summaries."""
    sweep, _ = sweep4
    result = cprec("report", str(sweep), cwd=sweep.parent)
    assert result.returncode == 0, result.stderr
    assert "| schedule=static | 2/2 |" in result.stdout
    assert "| schedule=cpt_cosine | 2/2 |" in result.stdout
    report = json.loads((sweep / "report" / "report.json").read_text())
    groups = {g["group"]: g for g in report["groups"]}
    for schedule in ("static", "cpt_cosine"):
        runs = [s for s in summaries(sweep) if s["schedule"] == schedule]
        g = groups[f"schedule={schedule}"]
        assert g["seeds"] == "0 1"
        for key in ("final_acc", "best_acc", "gbitops", "relative_cost", "train_time_s"):
            xs = [s[key] for s in runs]
            assert g[f"{key}_mean"] == pytest.approx(statistics.mean(xs), rel=1e-12)
            assert g[f"{key}_std"] == pytest.approx(statistics.stdev(xs), rel=1e-12, abs=1e-12)
    assert groups["schedule=cpt_cosine"]["gbitops_mean"] < groups["schedule=static"]["gbitops_mean"]
    assert groups["schedule=cpt_cosine"]["pareto"]  # the cheapest group is always on the front
    csv = (sweep / "report" / "report.csv").read_text().splitlines()
    assert len(csv) == 3
    assert_png_not_blank(sweep / "report" / "accuracy_vs_gbitops.png")
    plots = [r["plot"] for r in report["runs"]]
    assert len(plots) == 4 and all(plots)
    for plot in plots:
        assert_png_not_blank(sweep / "report" / plot)


def test_failed_and_diverged_jobs_do_not_stop_the_sweep(tmp_path) -> None:
    """Failed and diverged jobs leave their status, the others complete, the sweep exits 1."""
    # decay_only=[nope] fails at run time (no such parameter: known once the model is built);
    # lr=1e8 diverges; the rest completes
    result = cprec("train", "-m", "schedule=cpt_cosine", "optim.decay_only=null,[nope]",
                   "optim.lr=0.1,1e8", "trainer.threads=1", *TINY, cwd=tmp_path)
    assert result.returncode == 1
    assert "3 job(s) of the sweep" in result.stderr and "did not complete (1 diverged, 2 failed)" \
        in result.stderr
    sweep = only_sweep_dir(tmp_path)
    statuses = [s["status"] for s in summaries(sweep)]
    assert statuses == ["completed", "diverged", "failed", "failed"]
    jobs = result.stdout.splitlines()[-5:-1]  # the per-job lines name each job's status
    assert [re.split(r"\s{2,}", line)[1] for line in jobs] == statuses
    assert jobs[2].startswith("2 optim.decay_only=[nope] optim.lr=0.1 ") and "named nope" in jobs[2]
    assert "no parameter is named nope" in summaries(sweep)[2]["error"]
    report = cprec("report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "| optim.decay_only=null,optim.lr=0.1 | 1/1 |" in report.stdout
    assert "| optim.decay_only=null,optim.lr=100000000.0 | 0/1 (1 diverged) |" in report.stdout
    assert "| optim.decay_only=[nope],optim.lr=0.1 | 0/1 (1 failed) |" in report.stdout
    assert "runs that did not complete (3):" in report.stdout
    assert report.stdout.count("- failed: ") == 2 and "no parameter is named nope" in report.stdout
    assert_png_not_blank(sweep / "report" / "accuracy_vs_gbitops.png")


def _span(job: Path) -> tuple[float, float]:
    """When a job started (Hydra writes .hydra/ first) and ended (summary.json, written last)."""
    return (job / ".hydra" / "config.yaml").stat().st_mtime, (job / "summary.json").stat().st_mtime


def test_joblib_launcher_runs_jobs_in_parallel(tmp_path) -> None:
    """hydra/launcher=parallel runs two jobs whose training time spans overlap."""
    result = cprec("train", "-m", "hydra/launcher=parallel", "schedule=static,cpt_cosine", *TINY,
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    sweep = only_sweep_dir(tmp_path)
    assert [s["status"] for s in summaries(sweep)] == ["completed"] * 2
    (a0, a1), (b0, b1) = (_span(job) for job in job_dirs(sweep))
    assert a0 < b1 and b0 < a1, "the two jobs ran one after the other"


def test_submitit_local_launcher_runs_jobs_and_reports_failures(tmp_path) -> None:
    """hydra/launcher=local (submitit) runs the jobs, records the failed one, exits 1."""
    result = cprec("train", "-m", "hydra/launcher=local", "schedule=cpt_cosine",
                   "optim.decay_only=null,[nope]", "trainer.threads=1", *TINY, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "1 job(s) of the sweep" in result.stderr
    sweep = only_sweep_dir(tmp_path)
    assert [s["status"] for s in summaries(sweep)] == ["completed", "failed"]
    assert (sweep / ".submitit").is_dir()
