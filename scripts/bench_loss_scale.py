"""Step-time overhead of loss scaling at the error-rounding points, in one process.

ResNet-20 on digits, E4M3 (quant=fp8_e4m3 schedule=static), batch 128, the CPU; variants:
  none             no plugin at all (the baseline)
  none+telemetry   loss_scale=none loss_scale.telemetry=true (counting only)
  static           loss_scale=static (scale and count)
  dynamic          loss_scale=dynamic (scale, overflow check, count)
  adaptive         loss_scale=adaptive (per-layer statistics every step, count)
  adaptive/100     loss_scale=adaptive loss_scale.update_every=100
  dynamic-quiet    loss_scale=dynamic loss_scale.telemetry=false (overflow check only)
Rounds alternate between the variants so a busy machine slows all alike; the median step
time per variant and its ratio to ``none`` are printed:

    OMP_NUM_THREADS=1 python scripts/bench_loss_scale.py [--rounds 5] [--steps 5] [--threads 1]

(from a git worktree whose package is not the installed one: PYTHONPATH=. first)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cprec.config import (
    DatasetConfig,
    LossScaleConfig,
    QuantConfig,
    ScheduleConfig,
    TrainConfig,
    TrainerConfig,
)
from cprec.engine.build import build_run
from cprec.engine.step import TrainStep
from cprec.engine.trainer import step_plugins

VARIANTS = {
    "none": LossScaleConfig(),
    "none+telemetry": LossScaleConfig(telemetry=True),
    "static": LossScaleConfig(name="static", scale=1024.0),
    "dynamic": LossScaleConfig(name="dynamic"),
    "dynamic-quiet": LossScaleConfig(name="dynamic", telemetry=False),
    "adaptive": LossScaleConfig(name="adaptive"),
    "adaptive/100": LossScaleConfig(name="adaptive", update_every=100),
}


def build(loss_scale: LossScaleConfig, threads: int, batch: int):
    """The run's parts and its step with the loss-scaling plugin (none: no plugin)."""
    cfg = TrainConfig(dataset=DatasetConfig(name="digits"),
                      schedule=ScheduleConfig(name="static", kind="static"),
                      quant=QuantConfig(format="float", exp_bits=4, man_bits=3, has_inf=False),
                      trainer=TrainerConfig(device="cpu", batch_size=batch, threads=threads,
                                            progress=False),
                      loss_scale=loss_scale)
    parts = build_run(cfg)
    parts.precision.apply(0)
    return parts, TrainStep(parts.task, parts.model, parts.optimizer, step_plugins(parts))


def interleaved_medians(steps: dict, rounds: int, per_round: int) -> dict[str, float]:
    """Median seconds per call of each ``steps[name]()``, the variants taking turns each round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, call in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    steps = {}
    for name, ls in VARIANTS.items():
        parts, step = build(ls, args.threads, args.batch)
        step(parts.task.next_batch())  # warm-up: optimizer state, the adaptive graph walk
        steps[name] = lambda parts=parts, step=step: step(parts.task.next_batch())
    medians = interleaved_medians(steps, args.rounds, args.steps)
    base = medians["none"]
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps, median step time")
    for name, t in medians.items():
        print(f"  {name:15s} {t * 1e3:8.1f} ms   {t / base:5.3f}x none")


if __name__ == "__main__":
    main()
