"""The training loop: schedule -> precision setter -> step -> cost ledger, with exact resume.

``run_train(cfg, out_dir)`` is the whole library entry point of `cprec train`: it takes a
validated config and a run directory and leaves the DESIGN.md run-directory contract there.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cprec import runs
from cprec.bounds import resolve_bounds
from cprec.config import TrainConfig
from cprec.cost import CostLedger, measure_macs
from cprec.data import BatchStream, Dataset, build_dataset, eval_batches
from cprec.errors import CprecError
from cprec.models import build_model
from cprec.optim import build_lr_scheduler, build_optimizer
from cprec.quant import build_quantized, format_bits, layer_bits, set_precision
from cprec.schedules import PrecisionScheduler, build_schedule

log = logging.getLogger("cprec")
PROGRESS_EVERY = 10  # steps between progress-bar updates and divergence checks
# config keys that may change between a run and its resumption (they don't change results)
RESUMABLE_CHANGES = ("trainer.progress", "trainer.device", "trainer.threads", "resume", "output_root")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_run(saved: dict, current: dict, run_dir: Path) -> None:
    """Refuse to continue a checkpoint under a different config (it would not be that run)."""
    a, b = _flatten(saved), _flatten(current)
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES]
    if diff:
        k = diff[0]
        raise CprecError(f"{run_dir} holds a run with {k}={a.get(k)!r}, not {b.get(k)!r}; resume it "
                         f"with its own settings (cprec train resume={run_dir}) or use a new run dir")


@contextmanager
def stop_requests():
    """SIGINT/SIGTERM set a flag instead of killing the loop, so it can checkpoint first."""
    requested: list[int] = []
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: requested.append(signum))
    except ValueError:  # not the main thread (some launchers): keep the defaults
        pass
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present; nothing else in cprec names a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from cprec.errors import ConfigError

        raise ConfigError("trainer.device", name, "no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; returns (detached loss, logits) for the statistics."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), out.detach()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Dataset, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy) on the test split; not counted as training cost."""
    was_training = model.training
    model.eval()
    loss_sum, correct = torch.zeros((), device=data.x_test.device), 0
    for x, y in eval_batches(data.x_test, data.y_test, batch_size):
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += int((out.argmax(1) == y).sum())
    model.train(was_training)
    n = len(data.y_test)
    return float(loss_sum) / n, correct / n


class Trainer:
    """One run's live state; ``state_dict`` holds everything its future depends on."""

    def __init__(self, cfg: TrainConfig, out_dir: Path) -> None:
        self.cfg, self.out_dir = cfg, out_dir
        t = cfg.trainer
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self.min_bits, self.max_bits, self.bounds_source = resolve_bounds(cfg)
        seed_everything(cfg.seed)
        self.data = build_dataset(cfg.dataset).to(self.device)
        self.stream = BatchStream(self.data, t.batch_size, cfg.seed, self.device)
        self.total_steps = t.steps or t.epochs * self.stream.steps_per_epoch
        self.schedule = build_schedule(cfg.schedule, self.total_steps,
                                       (self.min_bits, self.max_bits), format_bits(cfg.quant))
        model = build_model(cfg.model, self.data.info)
        self.model, self.qrng = build_quantized(model, cfg.quant, cfg.seed)
        self.model.to(self.device).train()
        self.ledger = CostLedger(measure_macs(self.model, self.data.x_train[:1]))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, self.total_steps, cfg.optim)
        self.precision = PrecisionScheduler(self.schedule)
        self.metrics = runs.MetricsLog(out_dir / runs.METRICS)
        self.step, self.best_acc, self.train_time, self.prior_wall = 0, 0.0, 0.0, 0.0
        self._reset_window()
        self._bits_cache: dict[tuple[int, int], dict] = {}
        self.eval_every = t.eval_every or self.stream.steps_per_epoch
        self.checkpoint_every = t.checkpoint_every or self.eval_every

    def _reset_window(self) -> None:
        """Training loss/accuracy since the last evaluation, kept on the device."""
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.correct = torch.zeros((), device=self.device, dtype=torch.int64)
        self.seen = 0

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "version": 1, "step": self.step, "config": asdict(self.cfg),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "precision": self.precision.state_dict(), "qrng": self.qrng.state_dict(),
            "stream": self.stream.state_dict(), "ledger": self.ledger.state_dict(),
            "rng": _rng_state(), "metrics_lines": self.metrics.lines(),
            "best_acc": self.best_acc, "train_time_s": self.train_time,
            "wall_time_s": self.prior_wall + (time.perf_counter() - self.started),
            "window": {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(),
                       "seen": self.seen},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.precision.load_state_dict(state["precision"])
        self.qrng.load_state_dict(state["qrng"])
        self.stream.load_state_dict(state["stream"])
        self.ledger.load_state_dict(state["ledger"])
        _set_rng_state(state["rng"])
        self.metrics.truncate(state["metrics_lines"])
        self.step, self.best_acc = state["step"], state["best_acc"]
        self.train_time, self.prior_wall = state["train_time_s"], state["wall_time_s"]
        w = state["window"]
        self.loss_sum = w["loss_sum"].to(self.device)
        self.correct = w["correct"].to(self.device)
        self.seen = w["seen"]

    def save_checkpoint(self) -> None:
        runs.save_checkpoint(self.out_dir / runs.CHECKPOINT, self.state_dict())

    # -- the loop ------------------------------------------------------------------------
    def _set_bits(self, fw: int, bw: int) -> dict:
        set_precision(self.model, fw, bw)
        if (fw, bw) not in self._bits_cache:
            self._bits_cache[(fw, bw)] = layer_bits(self.model)
        return self._bits_cache[(fw, bw)]

    def train_step(self) -> None:
        fw, bw = self.precision.current()
        bits = self._set_bits(fw, bw)
        x, y = self.stream.next()
        loss, out = sgd_step(self.model, self.optimizer, x, y)
        self.lr_scheduler.step()
        self.ledger.add(bits, len(y))
        self.loss_sum += loss * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y)
        self.precision.advance()
        self.step += 1

    def evaluate_and_log(self) -> dict:
        fw, bw = self.precision.schedule.bits_at(self.step - 1)
        self._set_bits(*self.schedule.eval_bits)
        test_loss, test_acc = evaluate(self.model, self.data, self.cfg.trainer.eval_batch_size)
        self.best_acc = max(self.best_acc, test_acc)
        record = {
            "step": self.step, "epoch": self.step / self.stream.steps_per_epoch,
            "lr": self.optimizer.param_groups[0]["lr"], "bits_fw": fw, "bits_bw": bw,
            "train_loss": float(self.loss_sum) / max(self.seen, 1),
            "train_acc": int(self.correct) / max(self.seen, 1),
            "test_loss": test_loss, "test_acc": test_acc, "gbitops": self.ledger.gbitops,
            "train_time_s": self.train_time,
        }
        self.metrics.append(record)
        log.info("step %d/%d  bits %d/%d  train_loss %.4f  train_acc %.4f  test_acc %.4f  "
                 "GBitOPs %.4g", self.step, self.total_steps, fw, bw, record["train_loss"],
                 record["train_acc"], test_acc, record["gbitops"])
        self._reset_window()
        return record

    def diverged(self) -> bool:
        return not math.isfinite(float(self.loss_sum))

    def summary(self, status: str, last: dict | None) -> dict:
        last = last or {}
        return {
            "status": status, "final_acc": last.get("test_acc"), "best_acc": self.best_acc,
            "final_loss": last.get("test_loss"), "final_train_loss": last.get("train_loss"),
            "steps": self.step, "total_steps": self.total_steps,
            "gbitops": self.ledger.gbitops, "relative_cost": self.ledger.relative_cost,
            "train_time_s": self.train_time,
            "wall_time_s": self.prior_wall + (time.perf_counter() - self.started),
            "seed": self.cfg.seed, "model": self.cfg.model.name,
            "dataset": self.cfg.dataset.name, "schedule": self.cfg.schedule.name,
            "bits_fw_min": self.schedule.fw_range[0], "bits_fw_max": self.schedule.fw_range[1],
            "bits_bw": self.schedule.bits_at(0)[1], "bounds_source": self.bounds_source,
            "quant_format": self.cfg.quant.format, "device": str(self.device),
            "params": sum(p.numel() for p in self.model.parameters()),
            "macs_per_sample": sum(self.ledger.macs.values()),
        }

    def run(self) -> dict:
        self.started = time.perf_counter()
        ckpt = self.out_dir / runs.CHECKPOINT
        if ckpt.exists():
            state = runs.load_checkpoint(ckpt)
            check_same_run(state["config"], asdict(self.cfg), self.out_dir)
            self.load_state_dict(state)
            log.info("resumed from %s at step %d", ckpt, self.step)
        records = self.metrics.read()
        last = records[-1] if records else None
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.cfg.trainer.progress,
                   desc=f"{self.cfg.model.name}/{self.cfg.schedule.name}", mininterval=0.5,
                   dynamic_ncols=True)
        status = "completed"
        with stop_requests() as stop:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                self.train_step()
                if self.device.type == "cuda" and self.step % PROGRESS_EVERY == 0:
                    torch.cuda.synchronize()
                self.train_time += time.perf_counter() - t0
                end = self.step == self.total_steps
                at_eval = self.step % self.eval_every == 0 or end
                at_ckpt = self.step % self.checkpoint_every == 0 or end or bool(stop)
                if self.step % PROGRESS_EVERY == 0 or at_eval or at_ckpt:
                    if self.diverged():  # before any checkpoint: the last good one is kept
                        status = "diverged"
                        log.warning("loss is not finite at step %d: run diverged", self.step)
                        break
                    bar.set_postfix(loss=f"{float(self.loss_sum) / max(self.seen, 1):.3f}",
                                    acc=f"{int(self.correct) / max(self.seen, 1):.3f}",
                                    bits="%d/%d" % self.precision.schedule.bits_at(self.step - 1),
                                    refresh=False)
                    bar.update(self.step - bar.n)
                if at_eval:
                    last = self.evaluate_and_log()
                if at_ckpt:
                    self.save_checkpoint()
                if stop:
                    status = "interrupted"
                    log.warning("signal %d: checkpoint written at step %d; resume with "
                                "cprec train resume=%s", stop[0], self.step, self.out_dir)
                    break
        bar.close()
        summary = self.summary(status, last)
        runs.write_json(self.out_dir / runs.COST, {"total_gbitops": self.ledger.gbitops,
                                                   "relative_cost": self.ledger.relative_cost,
                                                   "layers": self.ledger.per_layer()})
        runs.write_json(self.out_dir / runs.SUMMARY, summary)
        return summary


def run_train(cfg: TrainConfig, out_dir: Path) -> dict:
    """Train per ``cfg`` into ``out_dir`` (resuming from its checkpoint); return the summary."""
    out_dir = Path(out_dir)
    summary_path = out_dir / runs.SUMMARY
    if summary_path.exists():
        done = runs.read_json(summary_path)
        if done.get("status") == "completed":
            log.info("%s is already completed; not training again", out_dir)
            return done
    return Trainer(cfg, out_dir).run()
