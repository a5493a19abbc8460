"""Data-parallel training (trainer.devices=N): exactly-once accounting, one writer, exact
resume after a SIGTERM to the group, a dead rank ends the group, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cprec.engine.distributed import check_devices, launched_env
from cprec.errors import ConfigError
from cprec.tasks.base import shard_bounds
from cprec.tasks.vision import random_crop_flip
from tests.helpers import FAST, read_summary, results, run_cli

RUN_FILES = {".hydra", "train.log", ".cprec.lock", "metrics.jsonl", "summary.json", "cost.json",
             "checkpoint.pt", "checkpoint.prev.pt"}
# slow enough per step to be signalled mid-run
RESUMABLE = ["model=resnet20", "dataset.train_subset=256", "trainer.batch_size=32", "trainer.steps=48",
             "trainer.eval_every=12", "trainer.checkpoint_every=3", "trainer.progress=false",
             "schedule.cycles=4", "trainer.devices=2"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`cprec <args>` in its own process group (the group a scheduler signals)."""
    env = {**os.environ, "CPREC_KERNELS": "reference", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cprec.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)


def ranks_of(proc: subprocess.Popen) -> list[int]:
    """The pids of the spawned ranks (children of any of the launcher's threads)."""
    tasks = Path(f"/proc/{proc.pid}/task").iterdir()
    kids = [int(k) for t in tasks for k in (t / "children").read_text().split()]
    return [k for k in kids if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]


@pytest.mark.slow
def test_two_ranks_count_the_global_batch_once(tmp_path: Path) -> None:
    """2 gloo processes on digits: the ledger (cost.json, GBitOPs) equals 1 process's for the same
    global batch and steps; one run dir with one summary and one metrics file."""
    for name, extra in (("one", []), ("two", ["trainer.devices=2"])):
        out = run_cli(["train", *FAST, *extra, f"hydra.run.dir={name}"], tmp_path,
                      env={"OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
    one, two = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    assert two["world_size"] == 2 and two["status"] == "completed" and two["steps"] == one["steps"]
    assert two["gbitops"] == one["gbitops"] and two["relative_cost"] == one["relative_cost"]
    cost = [json.loads((tmp_path / d / "cost.json").read_text()) for d in ("one", "two")]
    assert cost[0] == cost[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert {p.name for p in (tmp_path / "two").iterdir()} <= RUN_FILES
    assert len((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()) == 2
    assert abs(two["final_acc"] - one["final_acc"]) < 0.1  # same data; rounding noise differs


@pytest.mark.slow
def test_uneven_split_trains_the_global_batch_mean(tmp_path: Path) -> None:
    """A batch of 10 over 3 processes (4+3+3, losses weighted by share), fp32 and no BatchNorm:
    the run's metrics equal 1 process's up to float rounding (unweighted shards would not)."""
    fp32 = ["model=mlp", "trainer.steps=24", "trainer.eval_every=12", "trainer.progress=false",
            "schedule=fp32", "trainer.batch_size=10"]
    for name, extra in (("one", []), ("three", ["trainer.devices=3"])):
        out = run_cli(["train", *fp32, *extra, f"hydra.run.dir={name}"], tmp_path,
                      env={"OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr[-3000:]
    one, three = results(tmp_path / "one")[1], results(tmp_path / "three")[1]
    assert len(one) == len(three) == 2
    for a, b in zip(one, three):
        assert a["gbitops"] == b["gbitops"] and a["train_acc"] == b["train_acc"]
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


@pytest.mark.slow
def test_sigterm_to_group_then_resume_ends_like_uninterrupted(tmp_path: Path) -> None:
    """SIGTERM to the process group: every rank checkpoints, the run ends "interrupted" (exit 1, no
    traceback); resume= finishes it exactly where an uninterrupted 2-process run ends."""
    out = run_cli(["train", *RESUMABLE, "hydra.run.dir=ref"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    proc = start(["train", *RESUMABLE, "hydra.run.dir=run"], tmp_path)
    wait_for_checkpoint(tmp_path / "run", proc)
    time.sleep(0.1)
    assert proc.poll() is None, "run finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted" in stderr and "Traceback" not in stderr
    assert read_summary(tmp_path / "run")["status"] == "interrupted"
    out = run_cli(["train", f"resume={tmp_path / 'run'}"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in (tmp_path / "run" / "train.log").read_text()
    assert results(tmp_path / "run") == results(tmp_path / "ref")


@pytest.mark.slow
def test_dead_rank_ends_group_with_one_line(tmp_path: Path) -> None:
    """A rank killed mid-run stops the others: exit 1 within seconds, one line naming the rank."""
    proc = start(["train", *RESUMABLE, "trainer.steps=2000", "hydra.run.dir=run"], tmp_path)
    wait_for_checkpoint(tmp_path / "run", proc)
    os.kill(ranks_of(proc)[-1], signal.SIGKILL)
    t0 = time.time()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and time.time() - t0 < 60
    lines = [line for line in stderr.splitlines() if line.startswith("cprec: error:")]
    assert len(lines) == 1 and "data-parallel rank 1" in lines[0] and "stopped" in lines[0]


@pytest.mark.parametrize("args, key", [
    (["trainer.devices=0"], "trainer.devices=0"),
    (["trainer.devices=4", "trainer.batch_size=3"], "trainer.batch_size=3"),
    (["trainer.devices=2", "trainer.device=cuda"], "trainer.device"),
    (["trainer.devices=2", "trainer.sync_bn=true", "trainer.device=cpu"], "trainer.sync_bn"),
])
def test_bad_device_counts_are_one_line(tmp_path: Path, args: list[str], key: str) -> None:
    """No processes, a batch smaller than N, CUDA without (enough) devices, SyncBatchNorm on CPU:
    one line naming the key, exit 2, no run dir."""
    out = run_cli(["train", *FAST, *args, "hydra.run.dir=run"], tmp_path)
    if key == "trainer.device" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the count check is tested below")
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1 and key in out.stderr
    assert not (tmp_path / "run").exists()


def test_more_devices_than_cuda_has(monkeypatch: pytest.MonkeyPatch, compose) -> None:
    """trainer.devices above the CUDA device count is refused before any process starts."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        check_devices(compose(["trainer.devices=3", "trainer.device=cuda"]))
    assert check_devices(compose(["trainer.devices=2", "trainer.device=cuda"])) == "nccl"


def test_shards_cover_the_global_batch() -> None:
    """Ranks' slices tile the global batch, as even as possible; augmentation of a slice equals
    the slice of the whole batch's augmentation (the draws are the global batch's)."""
    for n, world in ((10, 3), (128, 2), (7, 7), (9, 4)):
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1
    x = torch.randn(10, 3, 8, 8)
    whole = random_crop_flip(x, torch.Generator().manual_seed(5))
    lo, hi = shard_bounds(10, 1, 3)
    part = random_crop_flip(x[lo:hi], torch.Generator().manual_seed(5), part=(lo, 10))
    assert torch.equal(part, whole[lo:hi])


def test_slurm_tasks_form_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """One task of a SLURM step of 8 is rank SLURM_PROCID of 8, its GPU SLURM_LOCALID; the
    master is the job's first node."""
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        # set, then delete: monkeypatch then restores the key's absence after the test, also
        # when launched_env() sets it (a leaked RANK makes later cprec subprocesses wait
        # for a group that never forms)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu07")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    assert launched_env() == (5, 8, 5)
    assert os.environ["MASTER_ADDR"] == "gpu07" and os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)


def test_slurm_ddp_launcher_composes() -> None:
    """hydra/launcher=slurm_ddp composes to submitit's SLURM launcher, one task per GPU."""
    from hydra import compose, initialize_config_dir

    from cprec.config import register_schemas
    from cprec.paths import config_dir

    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm_ddp", "trainer.devices=8"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert "SlurmLauncher" in launcher._target_
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == 8


@pytest.mark.slow
def test_sigterm_while_the_ranks_start_ends_interrupted(tmp_path: Path) -> None:
    """SIGTERM to the launching process the moment the ranks exist (still starting Python, not
    training): every rank ends "interrupted" with a checkpoint, exit 1, not "exit code -15"."""
    proc = start(["train", *RESUMABLE, "hydra.run.dir=run"], tmp_path)
    deadline = time.time() + 120
    while len(ranks_of(proc)) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "interrupted" in stderr and "-15" not in stderr, stderr[-2000:]
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "interrupted" and summary["steps"] >= 1
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node=2 -m cprec.cli <args>` in its own session."""
    env = {**os.environ, "CPREC_KERNELS": "reference", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "cprec.cli", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@pytest.mark.slow
def test_torchrun_group_holds_its_run_dir(tmp_path: Path) -> None:
    """Under torchrun: rank 0 holds the run dir's lock, so a second launch on it is refused in
    one cprec line while the first trains; only rank 0 wrote .hydra/; a SIGTERM to the
    first group ends it "interrupted"; a launch without hydra.run.dir is refused."""
    args = ["train", *[a for a in RESUMABLE if a != "trainer.devices=2"], "trainer.steps=2000"]
    first = torchrun([*args, "hydra.run.dir=run"], tmp_path)
    wait_for_checkpoint(tmp_path / "run", first)
    second = torchrun([*args, "hydra.run.dir=run"], tmp_path)
    _, stderr = second.communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.startswith("cprec: error:")]
    assert second.returncode != 0 and len(lines) == 1 and "in use by another cprec process" in lines[0]
    assert first.poll() is None
    os.killpg(first.pid, signal.SIGTERM)
    first.communicate(timeout=120)
    assert read_summary(tmp_path / "run")["status"] == "interrupted"
    assert sorted(p.name for p in (tmp_path / "run" / ".hydra").iterdir()) == \
        ["config.yaml", "hydra.yaml", "overrides.yaml"]
    nodir = torchrun(args, tmp_path)
    _, stderr = nodir.communicate(timeout=120)
    assert "hydra.run.dir is required here" in stderr and not (tmp_path / "outputs").exists()
