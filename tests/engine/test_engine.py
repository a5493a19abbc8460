"""The engine's pieces in-process: set-up, the step and its plug points, the loop, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cprec.engine import runs
from cprec.engine.build import build_run, plan_run, total_steps
from cprec.engine.step import StepPlugin, TrainStep
from cprec.engine.trainer import Trainer
from cprec.precision.schedules import PrecisionSchedule
from cprec.report.plots import schedule_curve

SMALL = ["model=mlp", "trainer.steps=12", "trainer.eval_every=6", "trainer.progress=false",
         "schedule.cycles=3", "schedule.bounds=config"]


@pytest.fixture
def cfg(compose):
    return compose(SMALL)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


class ScaleBy4(StepPlugin):
    """Loss scaling by a power of two: scale the loss, unscale the gradients (exact)."""

    name = "scale"

    def __init__(self) -> None:
        self.unscaled = 0

    def loss(self, loss, model):
        return loss * 4

    def before_update(self, optimizer):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad /= 4
        self.unscaled += 1
        return True

    def state_dict(self) -> dict:
        return {"unscaled": self.unscaled}

    def load_state_dict(self, state: dict) -> None:
        self.unscaled = state["unscaled"]


class SkipAll(StepPlugin):
    name = "skip"

    def __init__(self) -> None:
        self.skipped = 0

    def before_update(self, optimizer):
        return False

    def after_update(self, updated: bool) -> None:
        self.skipped += not updated

    def summary(self) -> dict:
        return {"skipped_steps": self.skipped}


def test_total_steps_formula_drops_the_last_partial_batch(compose) -> None:
    """epochs * floor(n / batch) unless trainer.steps is set; batch above n counts as n."""
    t = compose(["trainer.epochs=3", "trainer.batch_size=100"]).trainer
    assert total_steps(t, 1437) == 3 * 14
    assert total_steps(t, 50) == 3
    t.steps = 7
    assert total_steps(t, 1437) == 7


def test_plan_without_data_matches_the_built_run(cfg) -> None:
    """`cprec schedule` (no data) and `cprec train` (data loaded) resolve the same plan."""
    assert plan_run(cfg) == build_run(cfg).plan


def test_power_of_two_loss_scaling_plugin_changes_nothing(cfg) -> None:
    """Scaling the loss by 4 and unscaling the gradients trains bitwise like no plugin."""
    plain, scaled = build_run(cfg), build_run(cfg)
    plugin = ScaleBy4()
    steps = [TrainStep(plain.task, plain.model, plain.optimizer),
             TrainStep(scaled.task, scaled.model, scaled.optimizer, [plugin])]
    for _ in range(5):
        for parts, step in zip((plain, scaled), steps):
            parts.precision.apply(0)
            step(parts.task.next_batch())
    assert all(torch.equal(a, b) for a, b in zip(weights(plain.model), weights(scaled.model)))
    assert plugin.unscaled == 5 and steps[1].state_dict() == {"scale": {"unscaled": 5}}


def test_a_cost_term_reaches_the_gradients(cfg) -> None:
    """A plugin's added loss term changes the update (the learnable-precision plug point)."""
    class L2(StepPlugin):
        def loss(self, loss, model):
            return loss + sum((p ** 2).sum() for p in model.parameters())

    a, b = build_run(cfg), build_run(cfg)
    batch = a.task.next_batch()
    TrainStep(a.task, a.model, a.optimizer)(batch)
    TrainStep(b.task, b.model, b.optimizer, [L2()])(batch)
    assert not all(torch.equal(x, y) for x, y in zip(weights(a.model), weights(b.model)))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_a_vetoed_update_leaves_weights_and_reaches_the_summary(cfg, tmp_path) -> None:
    """before_update returning False skips optimizer.step; plugin summary keys are written."""
    parts = build_run(cfg)
    before = weights(parts.model)
    summary = Trainer(parts, tmp_path, plugins=[SkipAll()]).run()
    assert all(torch.equal(a, b) for a, b in zip(before, weights(parts.model)))
    assert summary["skipped_steps"] == 12 and summary["status"] == "completed"


def test_run_writes_the_contract_and_a_rebuildable_schedule(compose, tmp_path) -> None:
    """summary.json's schedule_spec rebuilds the run's exact schedule (what the report plots)."""
    cfg = compose([*SMALL, "schedule=cpt_exp_rise_fall"])
    summary = Trainer(build_run(cfg), tmp_path).run()
    saved = json.loads((tmp_path / runs.SUMMARY).read_text())
    assert saved == json.loads(json.dumps(summary))
    schedule = PrecisionSchedule(**saved["schedule_spec"])
    assert schedule == build_run(cfg).plan.schedule
    steps, fw, bw = schedule_curve(saved)
    assert fw == [schedule.bits_at(t - 1)[0] for t in steps] and set(bw) == {8}
    records = runs.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [6, 12]
    assert summary["final_acc"] == records[-1]["test_acc"]
    assert summary["best_acc"] == max(r["test_acc"] for r in records)
    assert json.loads((tmp_path / runs.COST).read_text())["total_gbitops"] == summary["gbitops"]


def test_in_process_resume_from_a_middle_checkpoint_is_bit_exact(compose, tmp_path: Path) -> None:
    """Stop after the step-6 checkpoint, resume in a new Trainer: same summary and metrics."""
    cfg = compose([*SMALL, "trainer.checkpoint_every=6"])
    whole = Trainer(build_run(cfg), tmp_path / "whole").run()
    first = Trainer(build_run(cfg), tmp_path / "split")
    first.parts.plan = replace(first.parts.plan, total_steps=6)
    first.run()  # a 6-step prefix with the 12-step schedule and lr: the checkpoint at 6
    (tmp_path / "split" / runs.SUMMARY).unlink()
    second = Trainer(build_run(cfg), tmp_path / "split")
    resumed = second.run()
    timing = ("train_time_s", "wall_time_s")
    strip = lambda d: {k: v for k, v in d.items() if k not in timing}  # noqa: E731
    assert strip(resumed) == strip(whole)
    assert [strip(r) for r in runs.read_metrics(tmp_path / "split")] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]


def test_total_steps_keep_the_last_partial_batch_when_asked(compose) -> None:
    """trainer.drop_last=false (CPT's loader): epochs * ceil(n / batch) steps."""
    t = compose(["trainer.epochs=3", "trainer.batch_size=100", "trainer.drop_last=false"]).trainer
    assert total_steps(t, 1437) == 3 * 15 and total_steps(t, 1400) == 3 * 14


@pytest.mark.parametrize("mode", ["current", "max"])
def test_evaluation_runs_at_the_configured_bits(compose, tmp_path: Path, mode: str) -> None:
    """trainer.eval_bits=current evaluates at the bits of the step just trained (CPT's code),
    max at the schedule's top; metrics.jsonl and summary.json say which."""
    cfg = compose([*SMALL, "trainer.eval_every=2", f"trainer.eval_bits={mode}"])
    parts = build_run(cfg)
    summary = Trainer(parts, tmp_path).run()
    records = runs.read_metrics(tmp_path)
    assert summary["eval_bits"] == mode and len(records) == 6
    expected = [r["bits_fw"] if mode == "current" else 8 for r in records]
    assert [r["bits_fw_eval"] for r in records] == expected
    assert len(set(expected)) > 1 or mode == "max"  # the cycle is visible in the evaluations
    from cprec.quant import layer_bits

    last_fw = parts.plan.schedule.bits_at(11)[0] if mode == "current" else 8
    assert {fw for fw, _ in layer_bits(parts.model).values()} <= {last_fw, 32}


def test_deficit_probe_comes_on_top_of_the_run(compose) -> None:
    """schedule=deficit with K steps (crit_learn.py): K + N steps, min bits for the first K,
    the lr at its base value through them and its milestones at K + 50% / 75% of N."""
    cfg = compose([*SMALL, "schedule=deficit", "schedule.deficit_steps=5"])
    parts = build_run(cfg)
    assert parts.total_steps == 17 and parts.plan.lr_start == 5
    assert [parts.precision.bits_at(s)[0] for s in (0, 4, 5, 16)] == [3, 3, 8, 8]
    lrs = []
    for _ in range(17):
        lrs.append(parts.optimizer.param_groups[0]["lr"])
        parts.optimizer.step()
        parts.lr_scheduler.step()
    assert lrs[:11] == [0.1] * 11 and lrs[11] == pytest.approx(0.01)
    assert lrs[13] == pytest.approx(0.01) and lrs[14] == pytest.approx(0.001)
