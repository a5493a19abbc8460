"""Scaled recipes resume bit-identically: the delayed amax histories, Hadamard signs,
stochastic-rounding counter and telemetry sums travel in the checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cprec.engine import runs
from cprec.engine.build import build_run
from cprec.engine.trainer import Trainer, step_plugins
from tests.helpers import strip

# checkpoints every 3 steps, evaluations at 6 and 12: a resume from step 3 lands mid-window
SMALL = ["model=mlp", "schedule=static", "quant.telemetry=true", "trainer.steps=12",
         "trainer.eval_every=6", "trainer.checkpoint_every=3", "trainer.progress=false"]


def trainer(cfg, run_dir: Path, steps: int | None = None) -> Trainer:
    parts = build_run(cfg)
    if steps is not None:
        parts.plan = replace(parts.plan, total_steps=steps)
    return Trainer(parts, run_dir, step_plugins(parts))


OTHERS = ["mxfp8", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "fp8_tensorwise", "fp8_rowwise",
          "fp8_rowwise_gw_hp", "fp8_blockwise"]


@pytest.mark.parametrize("recipe", ["fp8_delayed", "nvfp4",
                                    *[pytest.param(r, marks=pytest.mark.slow) for r in OTHERS]])
def test_kill_and_resume_is_bit_identical(compose, tmp_path: Path, recipe: str) -> None:
    # DeepSeek-V3's 128-wide tiles: an MLP that wide, its 64-pixel input layer in full precision
    wide = ["model.hidden=128", "quant.quantize_first=false"] if recipe == "fp8_blockwise" else []
    cfg = compose([f"quant={recipe}", *SMALL, *wide])
    whole = trainer(cfg, tmp_path / "whole").run()
    split = tmp_path / "split"
    trainer(cfg, split, steps=6).run()  # checkpoints at 3 and 6; keep the one at 3: as if
    (split / runs.SUMMARY).unlink()  # killed after step 3, mid-way to the first evaluation
    (split / runs.PREVIOUS_CHECKPOINT).replace(split / runs.CHECKPOINT)
    resumed = trainer(cfg, tmp_path / "split").run()
    assert strip(resumed) == strip(whole)
    assert [strip(r) for r in runs.read_metrics(tmp_path / "split")] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]
    assert resumed["quant_sqnr_db"]["forward.x"] > 0


def test_delayed_histories_roll_once_per_step(compose, tmp_path: Path) -> None:
    """After 12 steps each history holds 12 recorded amaxes and the scale follows TE's rule:
    max_elem / max(history)."""
    cfg = compose(["quant=fp8_delayed", *SMALL])
    t = trainer(cfg, tmp_path / "run")
    t.run()
    state = torch.load(tmp_path / "run" / runs.CHECKPOINT, weights_only=False)
    layer = state["plugins"]["scaled_formats"]["3"]["states"]
    x = layer["forward.x"]["amax"]
    assert int((x["history"] > 0).sum()) == 12
    assert torch.equal(x["scale"], torch.tensor(448.0) / x["history"].max())
    dy = layer["input_grad.dy"]["amax"]
    assert torch.equal(dy["scale"], torch.tensor(57344.0) / dy["history"].max())
