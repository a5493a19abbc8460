"""Learnable dynamic precision (cprec/precision/ldp.py): the gradient into p, the bounds, the cost loop,
the ledger, resume, the report's pictures and the bad-input errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from cprec.engine import runs
from cprec.engine.build import build_run
from cprec.engine.trainer import Trainer, step_plugins
from cprec.precision.ldp import LearnedPrecision
from tests.helpers import run_cli, strip

LDP = ["model=mlp", "schedule=ldp", "trainer.progress=false", "trainer.threads=1", "schedule.cycles=2",
       "schedule.bounds=config"]


def _task_backward(parts) -> None:
    parts.precision.apply(0)
    loss, _ = parts.task.forward(parts.model, parts.task.next_batch())
    loss.backward()


@pytest.mark.parametrize("schedule", ["ldp", "cpt_ldp"])
def test_p_gets_a_gradient_from_the_task_loss_alone(compose, schedule) -> None:
    """No cost term anywhere: the task loss alone gives every layer's p a finite, non-zero
    gradient (through the quantization step size)."""
    parts = build_run(compose([*LDP, f"schedule={schedule}", "trainer.steps=4"]))
    assert isinstance(parts.precision, LearnedPrecision) and len(parts.precision.names) == 2
    _task_backward(parts)
    grad = parts.precision.p.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all(), grad


def test_bits_stay_within_bounds_and_p_at_zero_runs_at_min_bits(compose) -> None:
    """p anywhere (even outside [0, 1]) gives bits in min..max; p = 0 puts the layer at
    min_bits, p = 1 at max_bits; cpt_ldp's offsets stay clamped too."""
    parts = build_run(compose([*LDP, "trainer.steps=4", "schedule.min_bits=3", "schedule.max_bits=7"]))
    prec, layers = parts.precision, [dict(parts.model.named_modules())[n] for n in parts.precision.names]
    for values, want in (([0.0, 1.0], [3, 7]), ([-5.0, 9.0], [3, 7]), ([0.5, 0.26], [5, 4])):
        with torch.no_grad():
            prec.p.copy_(torch.tensor(values))
        bits = prec.apply(0)
        assert [layer.fw_bits for layer in layers] == want
        assert [bits[n][0] for n in prec.names] == want and all(bits[n][1] == 8 for n in prec.names)
    cpt = build_run(compose([*LDP, "schedule=cpt_ldp", "trainer.steps=8", "schedule.cycles=2",
                             "schedule.max_offset=3"])).precision
    with torch.no_grad():
        cpt.p.copy_(torch.tensor([0.0, 1.0]))
    for step in range(8):
        base = cpt.schedule.bits_at(step)[0]
        bits = cpt.apply(step)
        assert [bits[n][0] for n in cpt.names] == [max(base - 3, 3), min(base + 3, 8)]


def test_p_pushed_to_zero_ends_at_min_bits(compose) -> None:
    """A target below what min_bits costs, pushed down only (and hard): every p is driven to 0
    and the layers train and evaluate at min_bits."""
    cfg = compose([*LDP, "trainer.steps=30", "schedule.target_cost=0.05", "schedule.cost_push=down",
                   "schedule.p_init=1.0", "schedule.p_lr=0.2", "schedule.push_strength=10"])
    parts = build_run(cfg)
    plugin = step_plugins(parts)[-1]
    for step in range(30):
        parts.precision.apply(step)
        loss, _ = parts.task.forward(parts.model, parts.task.next_batch())
        loss.backward()
        plugin.after_update(True)
    assert parts.precision.p.tolist() == [0.0, 0.0]
    assert [b for b in parts.precision.eval_layer_bits(30)] == [3, 3]


@pytest.mark.parametrize("target", [0.62, 0.8])  # mlp: 0.53 at min_bits (its fp32 classifier)
def test_closed_loop_lands_within_5_percent_of_the_target(compose, tmp_path, target) -> None:
    """A real run (mlp on digits, 150 steps): the achieved relative cost after the warm-up is
    within 5% of schedule.target_cost, and the ledger's own figure agrees."""
    cfg = compose([*LDP, "trainer.steps=150", "trainer.eval_every=50", f"schedule.target_cost={target}"])
    parts = build_run(cfg)
    summary = Trainer(parts, tmp_path, step_plugins(parts)).run()
    assert abs(summary["achieved_cost_after_warmup"] - target) <= 0.05 * target, summary
    assert summary["warmup_steps"] == 15 and 3 <= summary["bits_fw_mean"] <= 8
    assert set(summary["layer_bits_final"]) == {"1", "3"}


def test_ledger_is_the_sum_over_steps_and_layers(compose, tmp_path) -> None:
    """ledger BitOPs == sum over steps and layers of B * MACs_l * (b_l^2 + 2 b_l g), with each
    step's learned bits as applied (full-precision layers at 32/32)."""
    parts = build_run(compose([*LDP, "trainer.steps=40", "schedule.p_lr=0.3", "trainer.batch_size=32"]))
    seen: list[dict] = []
    apply = parts.precision.apply
    parts.precision.apply = lambda step: seen.append(apply(step)) or seen[-1]
    summary = Trainer(parts, tmp_path, step_plugins(parts)).run()
    macs = parts.ledger.macs
    total = sum(32 * m * (b[n][0] ** 2 + 2 * b[n][0] * b[n][1]) for b in seen for n, m in macs.items())
    assert len(seen) == 40 and len({tuple(b.items()) for b in seen}) > 1  # the bits did move
    assert parts.ledger.bitops == total and summary["gbitops"] == total / 1e9


@pytest.mark.parametrize("schedule", ["ldp", "cpt_ldp"])
def test_kill_and_resume_is_bit_identical(compose, tmp_path, schedule) -> None:
    """Killed after a checkpoint and resumed: summary, metrics (layer bits included) and p
    equal the uninterrupted run's."""
    cfg = compose([*LDP, f"schedule={schedule}", "trainer.steps=24", "trainer.eval_every=6",
                   "schedule.cycles=2", "schedule.p_lr=0.3"])
    parts = build_run(cfg)
    whole = Trainer(parts, tmp_path / "whole", step_plugins(parts)).run()
    run_dir = tmp_path / "run"
    first = build_run(cfg)  # test_faults.partial_run, with the step plugins
    first.plan = replace(first.plan, total_steps=12)
    Trainer(first, run_dir, step_plugins(first)).run()
    (run_dir / runs.SUMMARY).unlink()
    again = build_run(cfg)
    resumed = Trainer(again, run_dir, step_plugins(again)).run()
    assert strip(resumed) == strip(whole)
    assert [strip(r) for r in runs.read_metrics(run_dir)] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]
    assert torch.equal(again.precision.p, parts.precision.p)


def test_report_draws_the_layer_heatmap(tmp_path) -> None:
    """`cprec report` over an ldp run: the layer x step heatmap with final bits, and the run
    on the accuracy-vs-GBitOPs plot; metrics.jsonl carries layer_bits and cost_rel."""
    out = run_cli(["train", *LDP, "trainer.steps=20", "trainer.eval_every=5",
                   "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    records = runs.read_metrics(tmp_path / "run")
    assert set(records[-1]["layer_bits"]) == {"1", "3"} and 0 < records[-1]["cost_rel"] <= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["inference_gbitops"] <= summary["inference_gbitops_max_bits"]
    rep = run_cli(["report", "run", "--out", "rep"], tmp_path)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert list((tmp_path / "rep" / "runs").glob("*layer_bits*.png"))
    assert (tmp_path / "rep" / "accuracy_vs_gbitops.png").exists()


@pytest.mark.parametrize("args, needle", [
    (["schedule=ldp", "schedule.target_cost=0"], "schedule.target_cost"),
    (["schedule=ldp", "schedule.target_cost=1.5"], "schedule.target_cost"),
    (["schedule=ldp", "schedule.min_bits=6", "schedule.max_bits=6"], "schedule.min_bits"),
    (["schedule=cpt_ldp", "quant.format=float"], "quant.format"),
    (["schedule=cpt_ldp", "schedule.max_offset=-1"], "schedule.max_offset"),
])
def test_bad_ldp_input_is_one_line_exit_2(tmp_path, args, needle) -> None:
    """Bad LDP settings: one line naming the key, exit 2, nothing written."""
    out = run_cli(["train", "model=mlp", *args, "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "outputs").exists()


def test_schedule_preview_refuses_a_learned_schedule(tmp_path) -> None:
    """`cprec schedule schedule=ldp`: its bits are learned, so one line, exit 2, nothing written."""
    out = run_cli(["schedule", "model=mlp", "schedule=ldp", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 2 and "learned per layer" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


