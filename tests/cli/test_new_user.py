"""Issue 28: what a new user trips over, each through the CLI in a subprocess: refusals
that are one line and exit 2 with nothing written, records left alone, a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _closed_stdout(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cprec <args>` whose stdout reader has gone before it writes (`cprec --help | head -0`)."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run([sys.executable, "-m", "cprec.cli", *args], cwd=cwd, env=env,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["schedule", "--help"]])
def test_closed_stdout_ends_quietly(args: list[str], tmp_path: Path) -> None:
    """Item 13: a closed stdout is a normal end: no traceback, SIGPIPE's exit code."""
    r = _closed_stdout(args, tmp_path)
    assert r.stderr == "" and r.returncode == 141, r.stderr
