"""Shared test helpers: run the real CLI in a subprocess, compose configs like the CLI does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# subprocesses import this checkout's package, also where the editable install points at
# another one (a git worktree)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
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


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def resumed_and_whole(cfg, tmp_path: Path, stop_at: int) -> tuple[dict, dict]:
    """Train ``cfg`` whole, and split: stopped after the checkpoint at ``stop_at`` (a prefix
    with the whole run's schedule and lr), then resumed by a new Trainer. Both summaries,
    timings left out: a resume is exact when they are equal."""
    from dataclasses import replace

    from cprec import runs
    from cprec.build import build_run
    from cprec.engine import Trainer

    whole = Trainer(build_run(cfg), tmp_path / "whole").run()
    first = Trainer(build_run(cfg), tmp_path / "split")
    first.parts.plan = replace(first.parts.plan, total_steps=stop_at)
    first.run()
    (tmp_path / "split" / runs.SUMMARY).unlink()
    resumed = Trainer(build_run(cfg), tmp_path / "split").run()
    timing = ("train_time_s", "wall_time_s")
    return ({k: v for k, v in resumed.items() if k not in timing},
            {k: v for k, v in whole.items() if k not in timing})


@pytest.fixture
def compose():
    """compose(overrides, config_name="train") -> typed TrainConfig, as the CLI builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cprec.config import register_schemas, to_train_config
    from cprec.paths import config_dir

    register_schemas()

    def _compose(overrides: list[str] | None = None, config_name: str = "train"):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
        return to_train_config(cfg)

    return _compose


@pytest.fixture(autouse=True, scope="session")
def _reference_kernels():
    """In-process tests run the reference quantization kernels (same math, no build wait)."""
    from cprec.quant import set_backend

    set_backend("reference")
    yield


def whole_and_resumed(cfg, tmp_path: Path, split: int) -> tuple[dict, dict]:
    """Summaries of an uninterrupted run (``tmp_path/whole``) and of the same run stopped at
    its step-``split`` checkpoint and resumed by a new Trainer (``tmp_path/split``)."""
    from dataclasses import replace

    from cprec import runs
    from cprec.build import build_run
    from cprec.engine import Trainer

    whole = Trainer(build_run(cfg), tmp_path / "whole").run()
    first = Trainer(build_run(cfg), tmp_path / "split")
    first.parts.plan = replace(first.parts.plan, total_steps=split)
    first.run()  # a prefix with the whole run's schedule and lr: its checkpoint at `split`
    (tmp_path / "split" / runs.SUMMARY).unlink()
    return whole, Trainer(build_run(cfg), tmp_path / "split").run()
