"""Faults that used to garble or stop results: damaged checkpoints, a full disk, damaged files
under `cprec report` (two processes on one run dir: tests/cli/test_lock.py)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from cprec.cli.report import main_cli
from cprec.engine import runs
from cprec.engine.build import build_run
from cprec.engine.trainer import Trainer
from cprec.errors import CprecError
from tests.helpers import FAST, run_cli, strip
from tests.report.test_report import make_run

SMALL = ["model=mlp", "trainer.steps=12", "trainer.eval_every=3", "trainer.checkpoint_every=3",
         "trainer.progress=false", "schedule.cycles=3", "schedule.bounds=config"]


def partial_run(cfg, run_dir: Path, steps: int) -> None:
    """The first ``steps`` steps of the run, as if killed right after that checkpoint."""
    trainer = Trainer(build_run(cfg), run_dir)
    trainer.parts.plan = replace(trainer.parts.plan, total_steps=steps)
    trainer.run()
    (run_dir / runs.SUMMARY).unlink()


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(compose, tmp_path, caplog) -> None:
    """checkpoint.pt cut in half: resume warns, loads checkpoint.prev.pt, ends bit-identical."""
    cfg = compose(SMALL)
    whole = Trainer(build_run(cfg), tmp_path / "whole").run()
    run_dir = tmp_path / "run"
    partial_run(cfg, run_dir, 9)  # checkpoints at 3, 6, 9: checkpoint.pt = 9, prev = 6
    ckpt = run_dir / runs.CHECKPOINT
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="cprec"):
        resumed = Trainer(build_run(cfg), run_dir).run()
    assert "checkpoint.pt is unreadable" in caplog.text and "checkpoint.prev.pt (step 6)" in caplog.text
    assert strip(resumed) == strip(whole)
    assert [strip(r) for r in runs.read_metrics(run_dir)] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]


def test_no_readable_checkpoint_is_one_line_exit_2(tmp_path) -> None:
    """Both checkpoints garbled: one line naming both and how to start over, exit 2."""
    first = run_cli(["train", *FAST, "trainer.checkpoint_every=6", "hydra.run.dir=run"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = tmp_path / "run"
    for name in (runs.CHECKPOINT, runs.PREVIOUS_CHECKPOINT):
        (run_dir / name).write_bytes(b"not a checkpoint")
    (run_dir / runs.SUMMARY).unlink()
    out = run_cli(["train", *FAST, "trainer.checkpoint_every=6", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2, out.stderr
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in out.stderr
    assert f"no readable checkpoint in {run_dir}" in line and "checkpoint.prev.pt" in line
    assert "start over" in line


def test_a_full_disk_at_a_checkpoint_stops_with_the_resume_command(compose, tmp_path,
                                                                    monkeypatch) -> None:
    """ENOSPC while writing the step-6 checkpoint: RunWriteError (exit 1) naming the file, the
    last good checkpoint (step 3) and the resume command; no temp files; step 3 still loads."""
    cfg = compose(SMALL)
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if len([c for c in calls if ".checkpoint.pt.new" in c]) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)
    with pytest.raises(runs.RunWriteError) as e:
        Trainer(build_run(cfg), tmp_path).run()
    message = str(e.value)
    assert e.value.exit_code == 1
    assert "No space left on device" in message and "last good checkpoint is at step 3" in message
    assert f"cprec train resume={tmp_path}" in message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(runs.os, "fsync", real_fsync)
    state, path = runs.load_checkpoint(tmp_path)
    assert state["loop"]["step"] == 3 and path.name == runs.CHECKPOINT


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1.5 MB tmpfs (root only): room for one checkpoint of the mlp run, not two."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers it")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_exit_1_and_resumable(tmp_path, tiny_fs) -> None:
    """On a filesystem too small for two checkpoints: one line, exit 1, no temp files; after
    freeing space the resumed run completes."""
    run_dir = tiny_fs / "run"
    args = ["train", *FAST, "trainer.checkpoint_every=6", f"hydra.run.dir={run_dir}"]
    out = run_cli(args, tmp_path)
    assert out.returncode == 1, out.stderr[-2000:]
    line = out.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "could not write" in line and "No space left on device" in line
    assert f"resume with: cprec train resume={run_dir}" in line
    assert [p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".new"))] == []
    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_fs)], check=True)
    again = run_cli(["train", f"resume={run_dir}"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run_dir / runs.SUMMARY).read_text())["status"] == "completed"


def test_report_lists_damaged_files_and_still_writes(tmp_path, capsys) -> None:
    """A truncated summary.json and a garbled metrics.jsonl line: the report is written and
    names both runs with the reason; a torn last metrics line is not damage."""
    root = tmp_path / "sweep"
    make_run(root / "0_ok", "static", 0, {})
    bad_summary = make_run(root / "1_bad_summary", "static", 1, {})
    text = (bad_summary / "summary.json").read_text()
    (bad_summary / "summary.json").write_text(text[: len(text) // 2])
    bad_metrics = make_run(root / "2_bad_metrics", "static", 2, {})
    lines = (bad_metrics / "metrics.jsonl").read_text().splitlines()
    (bad_metrics / "metrics.jsonl").write_text("\n".join(["{garbled", *lines]) + "\n")
    torn = make_run(root / "3_torn", "static", 3, {})
    with (torn / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "test_a')
    assert main_cli([str(root)]) == 0
    report = (root / "report" / "report.md").read_text()
    assert "- damaged: 1_bad_summary: summary.json unreadable (JSONDecodeError" in report
    assert "- 2_bad_metrics: metrics.jsonl damaged" in report and "line 1 is not JSON" in report
    assert "3_torn" not in report
    data = json.loads((root / "report" / "report.json").read_text())
    assert {r["path"].rsplit("/", 1)[-1]: r["status"] for r in data["runs"]}["1_bad_summary"] == "damaged"


def test_errors_are_cprec_errors() -> None:
    """Both new faults end in cprec's one-line error path (CprecError subclasses)."""
    assert issubclass(runs.RunWriteError, CprecError) and issubclass(runs.CheckpointError, CprecError)
    assert runs.RunWriteError.exit_code == 1 and runs.CheckpointError.exit_code == 2
