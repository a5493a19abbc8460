"""Runs that survive: exact resume after SIGKILL/SIGTERM, one-line errors, divergence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, read_summary, results, run_cli

# slow enough per step to be killed mid-run, small enough for CI
RESUMABLE = ["model=resnet20", "dataset.train_subset=256", "trainer.batch_size=32", "trainer.steps=24",
             "trainer.eval_every=6", "trainer.checkpoint_every=3", "trainer.progress=false",
             "schedule.cycles=4"]
def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "CPREC_KERNELS": "reference"}
    return subprocess.Popen([sys.executable, "-m", "cprec.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, extra_s: float) -> None:
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(extra_s)  # land somewhere between checkpoints
    assert proc.poll() is None, "run finished before it could be interrupted"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    cwd = tmp_path_factory.mktemp("reference")
    out = run_cli(["train", *RESUMABLE, "hydra.run.dir=ref"], cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return results(cwd / "ref")


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path: Path, reference) -> None:
    """A run SIGKILLed between checkpoints and rerun in its dir resumes and ends with the same summary
    and metrics (timings aside) as an uninterrupted run."""
    proc = start(["train", *RESUMABLE, "hydra.run.dir=run"], tmp_path)
    wait_for_checkpoint(tmp_path / "run", proc, extra_s=0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "summary.json").exists()
    out = run_cli(["train", *RESUMABLE, "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in (tmp_path / "run" / "train.log").read_text()
    assert results(tmp_path / "run") == reference


@pytest.mark.slow
def test_sigterm_checkpoints_then_resume_completes(tmp_path: Path, reference) -> None:
    """SIGTERM leaves an "interrupted" run (exit 1, no traceback); resume= finishes it identical to an
    uninterrupted run, and rerunning a completed run does not train again."""
    proc = start(["train", *RESUMABLE, "hydra.run.dir=run"], tmp_path)
    wait_for_checkpoint(tmp_path / "run", proc, extra_s=0.1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted" in stderr and "Traceback" not in stderr
    assert read_summary(tmp_path / "run")["status"] == "interrupted"
    out = run_cli(["train", f"resume={tmp_path / 'run'}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert results(tmp_path / "run") == reference
    # a completed run is not trained again
    before = (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns
    again = run_cli(["train", *RESUMABLE, "hydra.run.dir=run"], tmp_path)
    assert again.returncode == 0 and (tmp_path / "run" / "checkpoint.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    """Rerunning an unfinished run dir with another config (hydra.run.dir= or resume= plus an
    override) exits 2 naming the stored value, no traceback, and leaves the dir as it was: a
    plain resume= afterwards still continues the run with its own settings."""
    run = tmp_path / "run"
    assert run_cli(["train", *FAST, "hydra.run.dir=run"], tmp_path).returncode == 0
    (run / "summary.json").unlink()  # pretend it was cut short
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    for args in (["train", *FAST, "optim.lr=0.05", "hydra.run.dir=run"],
                 ["train", f"resume={run}", "trainer.steps=40"]):
        out = run_cli(args, tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert ("optim.lr=0.1" in out.stderr or "trainer.steps=24" in out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before
    out = run_cli(["train", f"resume={run}"], tmp_path)
    assert out.returncode == 0 and read_summary(run)["steps"] == 24, out.stderr[-2000:]


BAD_INPUTS = [
    # (overrides, text the one line must contain, exit code)
    (["schedule=static", "schedule.bits=0"], "schedule.bits=0", 2),
    (["schedule=static", "schedule.bits=33"], "bits must be in 1..32", 2),
    (["schedule.bw_bits=0"], "schedule.bw_bits=0", 2),
    (["schedule.min_bits=8", "schedule.max_bits=4"], "must not exceed schedule.max_bits=4", 2),
    (["schedule.cycles=0"], "schedule.cycles=0", 2),
    (["trainer.steps=10", "schedule.cycles=32"], "set schedule.cycles=<n> with n <= 10", 2),
    (["trainer.steps=30"], "or use schedule=static for a quick smoke test", 2),
    (["dataset=fashion_mnist", "dataset.download=false", "dataset.root=/wrong/folder"],
     "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images", 2),
    (["logger=comet"], "choose one of ['none', 'tensorboard', 'mlflow', 'wandb']", 2),
    (["trainer.steps=0"], "trainer.steps=0", 2),
    (["trainer.steps=-5"], "trainer.steps=-5", 2),
    (["trainer.epochs=0"], "trainer.epochs=0", 2),
    (["trainer.batch_size=0"], "trainer.batch_size=0", 2),
    (["trainer.eval_every=0"], "trainer.eval_every=0", 2),
    (["optim.lr=0"], "optim.lr=0.0", 2),
    (["optim.lr=-0.1"], "the learning rate must be positive", 2),
    (["optim.momentum=1.5"], "optim.momentum=1.5", 2),
    (["trainer.device=tpu"], "choose one of ['auto', 'cpu', 'cuda']", 2),
    (["dataset.train_subset=0"], "dataset.train_subset=0", 2),
    (["prt.start_bits=9", "prt.max_bits=8"], "prt.start_bits=9", 2),
    (["quant=fp16"], "use schedule=static or schedule=fp32", 2),
    (["schedule.bounds=prt"], "cprec prt model=resnet20 dataset=digits", 2),
    (["dataset=mnist", "dataset.download=false", "dataset.root=nowhere"], "not found there", 2),
    (["dataset=cifar10", "dataset.download=false", "dataset.root=nowhere"], "cifar-10-batches-py", 2),
    (["output_root=/proc/cprec"], "output_root='/proc/cprec' is invalid", 2),
    (["resume=nowhere"], "no run directory there", 2),
    # Hydra's errors, one line too
    (["model=vgg"], "model=vgg is invalid: choose one of ['cpt_mobilenetv2', 'gcn', 'lenet'", 2),
    (["schedule=weekly"], "schedule=weekly is invalid: choose one of", 2),
    (["seed=abc"], "seed=abc is invalid: value 'abc' of type 'str' could not be converted to Integer", 2),
    (["trainer.steps=abc"], "trainer.steps=abc is invalid", 2),
    (["nonsense=1"], "key 'nonsense' not in 'TrainConfig'", 2),
]


@pytest.mark.parametrize("overrides, needle, code", BAD_INPUTS,
                         ids=[" ".join(b[0]) for b in BAD_INPUTS])
def test_bad_input_is_one_clear_line(tmp_path: Path, overrides: list[str], needle: str, code: int) -> None:
    """Each bad override exits 2 with one stderr line holding the hint, no traceback, and no files written."""
    out = run_cli(["train", *overrides], tmp_path)
    assert out.returncode == code, out.stderr
    assert needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    if code == 2:
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


@pytest.mark.slow
def test_divergence_inside_a_sweep(tmp_path: Path) -> None:
    """A huge lr makes one job diverge; the other two complete; the sweep exits 1."""
    out = run_cli(["train", "-m", *FAST, "optim.lr=0.05,1e12,0.1", "trainer.checkpoint_every=6"],
                  tmp_path)
    assert out.returncode == 1 and "did not complete" in out.stderr
    jobs = sorted(p.parent for p in (tmp_path / "outputs").rglob(".hydra"))
    statuses = [read_summary(j)["status"] for j in jobs]
    assert statuses == ["completed", "diverged", "completed"]
    diverged = jobs[1]
    assert (diverged / "checkpoint.pt").exists() or read_summary(diverged)["steps"] <= 6
    assert "diverged" in (diverged / "train.log").read_text()
