"""Issue 24 item 7: the core budgeting of concurrent cprec runs (affinity masks, the other
processes' claims, stale claims, fixed threads). No timing assertions here: the benchmark
is scripts/bench_concurrent.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cprec.engine.threads import Claim, ThreadClaim, read_claims, share_of


def test_the_cores_are_split_among_the_processes_allowed_on_them() -> None:
    two = frozenset({0, 1})
    assert share_of(two, []) == 2
    assert share_of(two, [Claim(1, two)]) == 1
    assert share_of(two, [Claim(1, two), Claim(2, two)]) == 1  # never below one thread
    four = frozenset(range(4))
    assert share_of(four, [Claim(1, two)]) == 3  # cores 0, 1 halved; 2, 3 whole
    assert share_of(four, [Claim(1, frozenset({4, 5}))]) == 4  # another mask: no overlap
    assert share_of(frozenset(range(8)), [Claim(1, frozenset(range(8)))] * 3) == 2


def test_claims_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f"{dead}.json").write_text(json.dumps({"pid": int(dead), "cpus": [0, 1]}))
    (tmp_path / "1.json").write_text(json.dumps({"pid": 1, "cpus": [0, 1]}))  # init: alive
    (tmp_path / "half.json").write_text("{")  # being written: skipped, kept
    assert read_claims(tmp_path, os.getpid()) == [Claim(1, frozenset({0, 1}))]
    assert not (tmp_path / f"{dead}.json").exists() and (tmp_path / "half.json").exists()


def test_automatic_threads_take_their_share_and_fixed_threads_stay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Alone: torch's default. Beside another claim on the same cores: the share, never above
    the default. trainer.threads=N: N whatever else runs. The claim file lives as long as
    the run and is gone after it."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    claim = ThreadClaim(None, tmp_path)
    claim.default = 4
    with claim:
        assert claim.threads() == 4 and (tmp_path / f"{os.getpid()}.json").exists()
        (tmp_path / "1.json").write_text(json.dumps({"pid": 1, "cpus": [0, 1, 2, 3]}))
        assert claim.threads() == 2
        claim.default = 1
        assert claim.threads() == 1
        fixed = ThreadClaim(3, tmp_path)
        assert fixed.threads() == 3
    assert not (tmp_path / f"{os.getpid()}.json").exists()


def test_the_command_line_makes_openmp_pools_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """OMP_WAIT_POLICY=passive is set before a command imports torch; a user's value wins."""
    from cprec.cli.dispatch import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "passive"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "active"
