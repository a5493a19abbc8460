"""The training loop: precision -> step -> cost ledger -> evaluation -> checkpoint.

``run_train(cfg, out_dir)`` is the whole library entry point of `cprec train`: it takes a
validated config and a run directory and leaves the DESIGN.md run-directory contract
there. Set-up lives in build.py, the batch/loss/metrics in the task (tasks/base.py), the step
and its plug points in step.py; this module only drives them and keeps the run resumable.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cprec.config import TrainConfig
from cprec.cost import measure_shapes
from cprec.engine import runs
from cprec.engine.build import RunParts, build_run
from cprec.engine.checkpoint import Checkpointing
from cprec.engine.loggers import build_sinks
from cprec.engine.progress import Progress, logs_above_bar
from cprec.engine.step import StepPlugin, TrainStep
from cprec.engine.threads import ThreadClaim, ThreadShare
from cprec.hardware.model import run_hardware_cost
from cprec.precision.ladder import steps_per_format

log = logging.getLogger("cprec")
# A step plugin may veto an optimizer step (dynamic loss scaling skips an overflowing one);
# the lr schedule still advances with the step count, as with torch.amp.GradScaler, so
# torch's warning that the first optimizer.step() was skipped is expected, not a mistake.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
PROGRESS_EVERY = 10  # steps between progress-bar updates and divergence checks


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_EARLY: list[int] = []  # stop signals that arrived before the loop began (catch_early_stops)


def catch_early_stops() -> None:
    """From now on SIGINT/SIGTERM are stop requests: a rank of a data-parallel group still
    starting (importing, loading data, joining) takes one as a request to stop after its
    first step, which ends the run "interrupted" on every rank, instead of dying."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: _EARLY.append(signum))


def request_stop(signum: int) -> None:
    """A stop request that reached this process another way (the launcher's note)."""
    _EARLY.append(signum)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """SIGINT/SIGTERM set a flag instead of killing the loop, so it can checkpoint first."""
    requested: list[int] = list(_EARLY)
    previous = {}
    try:
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, lambda signum, frame: requested.append(signum))
    except ValueError:  # not the main thread (some launchers): keep the defaults
        pass
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class LoopCounters:
    """Where the loop is: steps taken, best test metric, time spent (carried across resumes)."""

    step: int = 0
    best: float | None = None
    train_time: float = 0.0  # training steps only (DESIGN.md train_time_s)
    prior_wall: float = 0.0  # wall time of the run's earlier processes
    started: float = field(default_factory=time.perf_counter)

    def wall_time(self) -> float:
        return self.prior_wall + (time.perf_counter() - self.started)

    def state_dict(self) -> dict:
        return {"step": self.step, "best": self.best, "train_time_s": self.train_time,
                "wall_time_s": self.wall_time()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.best = state["step"], state["best"]
        self.train_time, self.prior_wall = state["train_time_s"], state["wall_time_s"]


class Trainer(Checkpointing):
    """One run's live state and loop; ``state_dict`` (checkpoint.py) holds its future."""

    def __init__(self, parts: RunParts, out_dir: Path, plugins: Sequence[StepPlugin] = ()) -> None:
        self.parts, self.cfg, self.out_dir = parts, parts.cfg, Path(out_dir)
        self.task, self.model = parts.task, parts.model
        self.train_step = TrainStep(parts.task, parts.model, parts.optimizer, plugins)
        self.window = self.task.new_window()
        self.metrics = runs.MetricsLog(self.out_dir / runs.METRICS)
        self.loop = LoopCounters()
        self.sinks: list = []
        self.eval_every = self.cfg.trainer.eval_every or self.task.steps_per_epoch
        self.checkpoint_every = self.cfg.trainer.checkpoint_every or self.eval_every

    # -- one step, one evaluation --------------------------------------------------------
    def train_one_step(self, progress: Progress) -> None:
        p, loop, t0 = self.parts, self.loop, time.perf_counter()
        bits = p.precision.apply(loop.step)
        progress.bits.add(*p.precision.bits_at(loop.step))
        batch = self.task.next_batch()
        loss, out = self.train_step(batch)
        p.lr_scheduler.step()
        p.ledger.add(bits, self.task.batch_samples(batch))
        self.window.add(loss, out, batch)
        loop.step += 1
        if p.device.type == "cuda" and loop.step % PROGRESS_EVERY == 0:
            torch.cuda.synchronize()
        loop.train_time += time.perf_counter() - t0

    def evaluate_and_log(self) -> dict:
        """Evaluate, append one metrics record (and to the extra sinks), start a new window."""
        p, metric, loop = self.parts, self.task.metric, self.loop
        fw, bw = p.precision.bits_at(loop.step - 1)
        p.precision.apply_eval(loop.step)
        with self.train_step.context():
            test = self.task.evaluate(self.model, self.cfg.trainer.eval_batch_size)
        value = test[f"test_{metric}"]
        better = max if self.task.higher_is_better else min
        loop.best = value if loop.best is None else better(loop.best, value)
        window = self.window.record()
        record = {"step": loop.step, "epoch": loop.step / self.task.steps_per_epoch,
                  "lr": p.optimizer.param_groups[0]["lr"], "bits_fw": fw, "bits_bw": bw,
                  "bits_fw_eval": p.precision.eval_bits_at(loop.step)[0], **window, **test,
                  "gbitops": p.ledger.gbitops, "train_time_s": loop.train_time, **self.train_step.metrics()}
        self.metrics.append(record)
        for sink in self.sinks:
            sink.write(record)
        shown = {k: record[k] for k in (*window, "test_loss", f"test_{metric}")}
        log.info("step %d/%d  bits %d/%d  %s  GBitOPs %.4g", loop.step, p.total_steps, fw, bw,
                 "  ".join(f"{k} {v:.4f}" for k, v in shown.items()), record["gbitops"])
        self.window = self.task.new_window()
        return record

    def open_sinks(self) -> list:
        """The metric sinks besides metrics.jsonl (engine/loggers.py) for this process."""
        return build_sinks(self.cfg, self.out_dir, self.loop.step)

    # -- the loop ------------------------------------------------------------------------
    def _stop_signal(self, stop: list[int]) -> int:
        """The signal stopping the run after this step (0: none), read once: not the live list."""
        return stop[0] if stop else 0

    def _due(self, signum: int) -> tuple[bool, bool]:
        """(evaluate now, checkpoint now) after the step just taken."""
        step = self.loop.step
        end = step == self.parts.total_steps
        return step % self.eval_every == 0 or end, step % self.checkpoint_every == 0 or end or bool(signum)

    def _loop(self, progress: Progress, last: dict | None) -> tuple[str, dict | None]:
        """Steps until the end, a signal or divergence: (status, last metrics record)."""
        status = "completed"
        with logs_above_bar(), stop_requests() as stop:
            while self.loop.step < self.parts.total_steps:
                self.train_one_step(progress)
                signum = self._stop_signal(stop)
                at_eval, at_ckpt = self._due(signum)
                if self.loop.step % PROGRESS_EVERY == 0 or at_eval or at_ckpt:
                    if not self.window.finite():  # before any checkpoint: the last good one stays
                        status = "diverged"
                        log.warning("loss is not finite at step %d: run diverged", self.loop.step)
                        break
                    progress.update(self.loop.step, self.window.record())
                if at_eval:
                    last = self.evaluate_and_log()
                if at_ckpt:
                    self.save_checkpoint()
                if signum:
                    status = "interrupted"
                    log.warning("signal %d: checkpoint written at step %d; resume with "
                                "cprec train resume=%s", signum, self.loop.step, self.out_dir)
                    break
        return status, last

    def run(self) -> dict:
        """Train to the end (or a signal, or divergence); write cost.json and summary.json."""
        self.loop.started = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        records = self.metrics.read()
        last = records[-1] if records else None
        self.sinks = self.open_sinks()
        log_precision_plan(self.parts)
        progress = Progress(self.parts.total_steps, self.loop.step, self.cfg.trainer.progress,
                            f"{self.cfg.model.name}/{self.cfg.schedule.name}")
        ledger = self.parts.ledger
        try:
            status, last = self._loop(progress, last)
            summary = run_summary(self, status, last)
            runs.write_results(self.out_dir, summary, {
                "total_gbitops": ledger.gbitops, "relative_cost": ledger.relative_cost,
                "layers": ledger.per_layer()})
            for sink in self.sinks:
                sink.finish(summary)
        except runs.RunWriteError as e:
            raise self.write_failure(e) from None
        finally:
            progress.close()
            for sink in self.sinks:
                sink.close()
        return summary


def run_summary(trainer: Trainer, status: str, last: dict | None) -> dict:
    """summary.json (DESIGN.md contract) of a run that ended with ``status``."""
    last, p, m, loop, cfg = last or {}, trainer.parts, trainer.task.metric, trainer.loop, trainer.cfg
    schedule = p.plan.schedule
    return {
        "status": status, f"final_{m}": last.get(f"test_{m}"), f"best_{m}": loop.best,
        **_accuracy_beside(trainer, m, last),
        "final_loss": last.get("test_loss"), "final_train_loss": last.get("train_loss"),
        "steps": loop.step, "total_steps": p.total_steps,
        "gbitops": p.ledger.gbitops, "relative_cost": p.ledger.relative_cost,
        "train_time_s": loop.train_time, "wall_time_s": loop.wall_time(),
        "seed": cfg.seed, "model": cfg.model.name,
        "dataset": cfg.dataset.name, "schedule": cfg.schedule.name,
        **schedule.bit_ranges(), "bounds_source": p.plan.bounds_source,
        "eval_bits": cfg.trainer.eval_bits,
        "quant_format": cfg.quant.format, "device": str(p.device),
        "params": sum(t.numel() for t in trainer.model.parameters()),
        "macs_per_sample": sum(p.ledger.macs.values()),
        "schedule_spec": schedule.spec(), **trainer.train_step.summary(),
        **({"steps_per_format": steps_per_format(schedule, loop.step)} if schedule.ladder else {}),
        **_hardware_cost(trainer),
        **({"warnings": warnings} if (warnings := run_warnings(p)) else {}),
    }


def _hardware_cost(trainer: Trainer) -> dict[str, float]:
    """energy_j and modeled_time_s.<device> (cprec/hardware/) of the steps trained."""
    shapes = measure_shapes(trainer.model, trainer.task.sample_input())
    p = trainer.parts
    return run_hardware_cost(p.ledger, shapes, p.cfg.quant, trainer.loop.step, p.cfg.cost.devices,
                             p.rungs)


def run_warnings(parts: RunParts) -> list[str]:
    """What a run did that the user may not have meant (it trained anyway): summary.json's
    ``warnings``, also logged at the start and printed in the result block."""
    return [w for w in (parts.plan.schedule.cycle_warning(),) if w]


def log_precision_plan(parts: RunParts) -> None:
    """The log's record of the run's precision: schedule, bits, where the bounds came from."""
    ranges = parts.plan.schedule.bit_ranges()
    log.info("schedule %s: forward %d..%d bits, backward %d..%d bits, bounds from %s",
             parts.cfg.schedule.name, ranges["bits_fw_min"], ranges["bits_fw_max"],
             ranges["bits_bw_min"], ranges["bits_bw_max"], parts.plan.bounds_source)
    for warning in run_warnings(parts):
        log.warning("%s", warning)


def _accuracy_beside(trainer: Trainer, metric: str, last: dict) -> dict:
    """``final_acc``/``best_acc`` of a task whose headline metric is another one but which
    reports accuracy too (a language model's next-token accuracy), so every summary keeps
    the DESIGN.md keys."""
    if metric == "acc" or "test_acc" not in last:
        return {}
    accs = [r["test_acc"] for r in trainer.metrics.read() if "test_acc" in r]
    return {"final_acc": last["test_acc"], "best_acc": max(accs)}


def step_plugins(parts: RunParts) -> list[StepPlugin]:
    """The plugins the config asks for: real mixed precision (numerics/amp.py), loss scaling
    (numerics/loss_scale.py), learned precision (precision/ldp.py; it sees the unscaled gradients), gradient
    clipping (step.py; it clips the unscaled gradients the optimizer will use), the scaled
    formats' amax histories and telemetry (numerics/scaled_step.py; after the update)."""
    from cprec.engine.kernel_counts import gemm_count_plugin
    from cprec.engine.step import grad_clip
    from cprec.numerics.amp import build_amp
    from cprec.numerics.loss_scale import build_loss_scaling
    from cprec.numerics.scaled_step import scaled_formats
    from cprec.precision.ldp import ldp_step

    plugins = (build_amp(parts), build_loss_scaling(parts), ldp_step(parts),
               grad_clip(parts.model, parts.cfg.optim.grad_clip), scaled_formats(parts),
               gemm_count_plugin(parts.model, parts.cfg.quant.kernels))
    return [p for p in plugins if p is not None]


def run_train(cfg: TrainConfig, out_dir: Path) -> dict:
    """Train per ``cfg`` into ``out_dir`` (resuming from its checkpoint); return the summary."""
    out_dir = Path(out_dir)
    with runs.RunLock(out_dir):
        done = runs.completed_summary(out_dir)
        if done is not None:
            log.info("%s is already completed; not training again", out_dir)
            return done
        with ThreadClaim(cfg.trainer.threads) as claim:  # share the cores with other runs
            parts = build_run(cfg)
            return Trainer(parts, out_dir, [*step_plugins(parts), ThreadShare(claim)]).run()
