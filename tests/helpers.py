"""Plain helpers the test folders share: the real CLI in a subprocess, tiny settings, resume
checks. Imported as ``from tests.helpers import ...``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tiny, fast training settings for end-to-end tests on the embedded digits dataset
FAST = ["model=mlp", "trainer.steps=24", "trainer.eval_every=12", "trainer.progress=false",
        "schedule.cycles=4"]


def run_cli(args: list[str], cwd: Path, compile_kernels: bool = False, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """`cprec <args>` in a subprocess; quantization kernels as reference torch ops unless
    ``compile_kernels`` asks for the fast back ends (CPREC_KERNELS=auto)."""
    kernels = "auto" if compile_kernels else "reference"
    full_env = {**os.environ, "CPREC_KERNELS": kernels, **(env or {})}
    full_env.pop("CPREC_COMPILE", None)  # the old switch
    full_env.pop("CPREC_OUTPUT_ROOT", None)
    return subprocess.run([sys.executable, "-m", "cprec.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


TIMING = ("train_time_s", "wall_time_s")  # wall-clock fields: the only ones two equal runs differ in


def strip(d: dict) -> dict:
    """A summary or metrics record without its wall-clock fields."""
    return {k: v for k, v in d.items() if k not in TIMING}


def results(run_dir: Path) -> tuple[dict, list[dict]]:
    """A run dir's summary and metrics records, without the wall-clock fields."""
    metrics = [strip(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return strip(read_summary(run_dir)), metrics


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def resumed_and_whole(cfg, tmp_path: Path, stop_at: int) -> tuple[dict, dict]:
    """Train ``cfg`` whole, and split: stopped after the checkpoint at ``stop_at`` (a prefix
    with the whole run's schedule and lr), then resumed by a new Trainer. Both summaries,
    timings left out: a resume is exact when they are equal."""
    from dataclasses import replace

    from cprec.engine import runs
    from cprec.engine.build import build_run
    from cprec.engine.trainer import Trainer

    whole = Trainer(build_run(cfg), tmp_path / "whole").run()
    first = Trainer(build_run(cfg), tmp_path / "split")
    first.parts.plan = replace(first.parts.plan, total_steps=stop_at)
    first.run()
    (tmp_path / "split" / runs.SUMMARY).unlink()
    resumed = Trainer(build_run(cfg), tmp_path / "split").run()
    return strip(resumed), strip(whole)
