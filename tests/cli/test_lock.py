"""Two processes on one run directory: the second ends at once and touches nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cprec.engine import runs
from tests.helpers import FAST, run_cli

SLOW_RUN = ["model=resnet20", "dataset.train_subset=256", "trainer.batch_size=32", "trainer.steps=400",
            "trainer.eval_every=20", "trainer.progress=false", "schedule.cycles=4"]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.suffix in (".yaml", ".jsonl")}


@pytest.mark.slow
def test_a_second_process_on_a_live_run_dir_is_refused(tmp_path: Path) -> None:
    """While one process trains in a dir, the same command again: one line naming the dir and
    the holder's PID, exit 2, and no file of the run changed; the first run completes."""
    env = {**os.environ, "CPREC_KERNELS": "reference"}
    first = subprocess.Popen([sys.executable, "-m", "cprec.cli", "train", *SLOW_RUN, "hydra.run.dir=run"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    run_dir = tmp_path / "run"
    try:
        deadline = time.time() + 300
        while not (run_dir / runs.METRICS).exists():
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        before = snapshot(run_dir)
        second = run_cli(["train", *SLOW_RUN, "trainer.eval_every=10", "hydra.run.dir=run"], tmp_path)
        during = snapshot(run_dir)
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)  # no need for 400 steps: stop it cleanly
    assert second.returncode == 2, second.stderr
    line = second.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in second.stderr
    assert f"{run_dir} is in use by another cprec process (PID {first.pid})" in line
    assert during[".hydra/overrides.yaml"] == before[".hydra/overrides.yaml"]
    assert first.wait(timeout=120) == 1
    assert runs.lock_holder(run_dir) is None  # released when the holder ended


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    """SIGKILL drops the lock with the process: the lock file stays, nobody holds it."""
    code = ("import sys, time; from cprec.engine.runs import RunLock; "
            "lock = RunLock(sys.argv[1]).__enter__(); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert runs.lock_holder(tmp_path) == str(holder.pid)
    with pytest.raises(runs.RunDirBusy, match=f"PID {holder.pid}"):
        runs.RunLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    assert (tmp_path / runs.LOCK).exists() and runs.lock_holder(tmp_path) is None
    with runs.RunLock(tmp_path):
        assert runs.lock_holder(tmp_path) == str(os.getpid())


def test_sweep_jobs_share_nothing_and_are_not_blocked(tmp_path: Path) -> None:
    """A sweep's jobs each lock their own dir: a 2-job sweep completes."""
    out = run_cli(["train", "-m", *FAST, "seed=0,1", "hydra.sweep.dir=sweep"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) == 2
