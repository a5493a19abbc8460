"""The shells' shared path without a live Hydra run: thread budgeting, output-root
resolution, sweep pinning, the pre-flight's one-line errors and the printed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cprec.cli.train  # noqa: F401  (registers the config schemas, as the CLI does)
from cprec.cli import console, shell
from cprec.paths import output_root

# ---- thread budgeting -------------------------------------------------------------------


def test_single_run_keeps_torch_default_threads() -> None:
    """Outside a sweep, no launcher setting changes torch's thread count."""
    assert shell.threads_per_job(False, {"n_jobs": 4, "cpus_per_task": 2}, 16) is None


@pytest.mark.parametrize("n_jobs, cpus, threads", [(2, 16, 8), (3, 16, 5), (4, 2, 1), (32, 16, 1)])
def test_joblib_positive_n_jobs_share_the_cores(n_jobs: int, cpus: int, threads: int) -> None:
    """n_jobs side by side get cpus // n_jobs threads each, never fewer than one."""
    assert shell.threads_per_job(True, {"n_jobs": n_jobs}, cpus) == threads


@pytest.mark.parametrize("n_jobs, cpus, threads", [(-1, 16, 1), (-9, 16, 2), (-2, 4, 1), (-20, 4, 4)])
def test_joblib_negative_n_jobs_count_like_joblib(n_jobs: int, cpus: int, threads: int) -> None:
    """A negative n_jobs means cpus + 1 + n_jobs jobs (at least one), as joblib reads it."""
    assert shell.threads_per_job(True, {"n_jobs": n_jobs}, cpus) == threads


@pytest.mark.parametrize("n_jobs", [1, 0, None, "${oc.env:JOBS}"])
def test_one_job_at_a_time_keeps_torch_default(n_jobs: object) -> None:
    """One job at a time (or no usable n_jobs) owns the machine: no thread cap."""
    assert shell.threads_per_job(True, {"n_jobs": n_jobs}, 16) is None


def test_submitit_cpus_per_task_sets_threads() -> None:
    """submitit's cpus_per_task is each job's core share, whatever n_jobs says."""
    assert shell.threads_per_job(True, {"cpus_per_task": 3, "n_jobs": 8}, 16) == 3
    assert shell.threads_per_job(True, {"cpus_per_task": 0, "n_jobs": 2}, 16) == 8


def test_basic_launcher_keeps_torch_default() -> None:
    """Hydra's basic launcher runs jobs one after another: no thread cap."""
    assert shell.threads_per_job(True, {"_target_": "BasicLauncher"}, 16) is None


# ---- output root and sweep dirs ---------------------------------------------------------


def test_output_root_precedence() -> None:
    """`output_root=` beats $CPREC_OUTPUT_ROOT beats `outputs`, as train.yaml composes it."""
    env = {"CPREC_OUTPUT_ROOT": "/env"}
    assert output_root(["output_root=/a", "++output_root=/b"], env) == ("/b", "output_root")
    assert output_root(["seed=1"], env) == ("/env", "CPREC_OUTPUT_ROOT")
    assert output_root([], {}) == ("outputs", "output_root")


def test_sweep_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `-m` sweep is pinned under $CPREC_OUTPUT_ROOT (the bug: it went to ./outputs)."""
    monkeypatch.setenv("CPREC_OUTPUT_ROOT", "/x")
    argv, sweep = shell.pin_sweep_dir(["-m", "seed=0,1"], "train")
    assert sweep is not None and sweep.parts[:3] == ("/", "x", "train-multirun")
    assert argv[-1] == f"hydra.sweep.dir={sweep}"
    assert shell.pin_sweep_dir(["seed=1"], "train") == (["seed=1"], None)
    kept = ["-m", "hydra.sweep.dir=mine", "seed=0,1"]
    assert shell.pin_sweep_dir(kept, "train") == (kept, Path("mine"))


def test_sweep_dir_with_odd_characters_is_quoted() -> None:
    """A root with spaces or commas reaches Hydra as one quoted value, not a sweep."""
    argv, sweep = shell.pin_sweep_dir(["-m", "output_root=/tmp/a b,c"], "prt")
    assert str(sweep).startswith("/tmp/a b,c/prt-multirun/")
    assert argv[-1] == f"hydra.sweep.dir='{sweep}'"


def test_unwritable_root_from_the_environment_is_named(monkeypatch, capsys) -> None:
    """The probe names the setting that chose the folder, here the environment variable."""
    monkeypatch.setenv("CPREC_OUTPUT_ROOT", "/proc/cprec")
    with pytest.raises(SystemExit) as stop:
        shell.check_writable(["seed=1"])
    assert stop.value.code == 2
    assert "CPREC_OUTPUT_ROOT='/proc/cprec' is invalid" in capsys.readouterr().err
    shell.check_writable(["--cfg", "job"])  # prints only: nothing to write, no probe


# ---- pre-flight -------------------------------------------------------------------------


def preflight_error(argv: list[str], capsys: pytest.CaptureFixture, config: str = "train") -> str:
    with pytest.raises(SystemExit) as stop:
        shell.preflight(argv, config)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("argv, line", [
    (["trainer.steps=abc"], "trainer.steps=abc is invalid: value 'abc' of type 'str' could not be "
                            "converted to Integer"),
    (["trainer.stepz=3"], "trainer.stepz=3 is invalid: key 'stepz' not in 'TrainerConfig'; keys "
                          "there: epochs, steps,"),
    (["model=resnet999"], "model=resnet999 is invalid: choose one of ['cpt_mobilenetv2', 'gcn', 'lenet',"),
    (["trainer.steps=[1"], "trainer.steps=[1 is invalid: no viable alternative at input '[1'"),
    (["seed=0,1"], "seed=0,1 is invalid: sweeping over values needs -m; for a list write seed=[0,1]"),
    (["seed=null"], "seed=null is invalid: field 'seed' is not Optional"),
    (["+seed=3"], "+seed=3 is invalid: could not append to config"),
    (["-m", "seed=0,1", "trainer.steps=10,abc"], "trainer.steps=abc is invalid: value 'abc'"),
    (["-m", "model=mlp,vgg", "seed=0,1"], "model=vgg is invalid: choose one of"),
    (["-m", "hydra.run.dir=a,b"], "hydra.run.dir=a,b is invalid: Hydra's own settings cannot be swept"),
    (["--cfg", "job", "optim.lr=fast"], "optim.lr=fast is invalid: value 'fast' of type 'str'"),
])
def test_composition_errors_are_one_line(argv: list[str], line: str, capsys) -> None:
    """Type errors, unknown keys and options, bad syntax and bad sweep values: one line, exit 2."""
    assert preflight_error(argv, capsys).startswith(f"cprec: error: {line}")


def test_prt_preflight_uses_its_own_config(capsys) -> None:
    """Each shell pre-flights its own primary config."""
    assert "prt.steps_per_bits=x is invalid" in preflight_error(["prt.steps_per_bits=x"], capsys, "prt")


@pytest.mark.parametrize("argv", [
    ["hydra/launcher=parallel", "hydra.launcher.n_jobs=3", "hydra.run.dir=somewhere"],
    ["-m", "hydra/launcher=local", "hydra.sweep.dir=x", "schedule=glob(cpt_cosine*)", "seed=range(0,5)"],
    ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "schedule=static,cpt_cosine"],
    ["--help", "trainer.steps=abc"], ["--hydra-help"], ["--info"], ["--cfg", "job", "model=lenet"],
    ["++trainer.steps=5", "dataset=mnist", "dataset.root='a b'", "optim.milestones=[0.3,0.6]",
     "schedule=static"],
])
def test_valid_commands_pass_preflight(argv: list[str], capsys) -> None:
    """Hydra's own overrides, sweeps, info flags and quoting pass untouched."""
    shell.preflight(argv, "train")
    assert capsys.readouterr().err == ""


# ---- printed results --------------------------------------------------------------------

SUMMARY = {"status": "completed", "final_acc": 0.98056, "best_acc": 0.98611, "gbitops": 12545.2,
           "relative_cost": 0.03817, "train_time_s": 12.94}


def test_result_block_shows_accuracy_cost_time_and_dir(tmp_path: Path, monkeypatch) -> None:
    """A finished run ends with its verdict, quality, cost, time and where it lies."""
    monkeypatch.chdir(tmp_path)
    block = console.result_block(SUMMARY, tmp_path / "outputs" / "train" / "d" / "t")
    assert block.splitlines() == [
        "completed  final acc 0.9806  best 0.9861  12,545 GBitOPs (0.0382 of fp32)  train 12.9 s",
        "run dir  outputs/train/d/t",
    ]


def test_result_block_prefers_perplexity() -> None:
    """Language-model runs (final_ppl in the summary) show perplexity, not accuracy."""
    block = console.result_block({**SUMMARY, "final_ppl": 123.456, "best_ppl": 98.7}, Path("/r"))
    assert "final ppl 123.46  best 98.70" in block and "acc" not in block


def make_job(sweep: Path, name: str, overrides: list[str], result_file: str, result: dict | None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if result is not None:
        (job / result_file).write_text(json.dumps(result))


def test_sweep_summary_lists_each_job_and_the_next_command(tmp_path: Path, capsys) -> None:
    """One line per job (differing overrides, status, accuracy, cost), then `cprec report`;
    a sweep with a failed, diverged or missing job exits 1."""
    sweep = tmp_path / "sweep"
    make_job(sweep, "0_model=mlp,seed=0", ["model=mlp", "seed=0"], "summary.json", SUMMARY)
    make_job(sweep, "1_model=mlp,seed=1", ["model=mlp", "seed=1"], "summary.json",
             {"status": "diverged", "gbitops": 3.0})
    make_job(sweep, "2_model=mlp,seed=2", ["model=mlp", "seed=2"], "summary.json",
             {"status": "failed", "error": "schedule.bounds=prt but no PRT result"})
    make_job(sweep, "10_model=mlp,seed=10", ["model=mlp", "seed=10"], "summary.json", None)
    assert shell.finish_sweep(sweep, "summary.json") == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[1:] == [
        "0 seed=0    completed  final acc 0.9806  best 0.9861  12,545 GBitOPs",
        "1 seed=1    diverged   3 GBitOPs",
        "2 seed=2    failed     schedule.bounds=prt but no PRT result",
        "10 seed=10  missing",
        f"next: cprec report {sweep}",
    ]
    assert "4 job(s)" in out.splitlines()[0]
    assert "3 job(s) of the sweep" in err and "(1 diverged, 1 failed, 1 missing)" in err


def test_prt_sweep_summary_shows_bounds(tmp_path: Path, capsys) -> None:
    """PRT jobs are listed from prt.json with their bounds; no report command follows."""
    result = {"status": "completed", "lower_bits": 3, "upper_bits": 8, "gbitops": 153.2}
    make_job(tmp_path, "0_seed=0", ["seed=0"], "prt.json", result)
    make_job(tmp_path, "1_seed=1", ["seed=1"], "prt.json", result)
    assert shell.finish_sweep(tmp_path, "prt.json") == 0
    out = capsys.readouterr().out
    assert "0 seed=0  completed  bounds 3..8  153 GBitOPs" in out and "next:" not in out


def test_slurm_launcher_without_slurm_is_one_line(monkeypatch, capsys) -> None:
    """hydra/launcher=slurm where sbatch/srun are missing: one line naming the fix, exit 2."""
    monkeypatch.setattr(shell.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as e:
        shell.check_launcher(["-m", "hydra/launcher=slurm", "seed=0,1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hydra/launcher=slurm is invalid" in err
    shell.check_launcher(["-m", "hydra/launcher=local", "seed=0,1"])  # others pass
