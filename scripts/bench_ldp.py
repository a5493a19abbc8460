"""A learned-precision (ldp) training step against a static 8/8 step, in one process.

ResNet-20 on CIFAR-shaped synthetic data, through build.build_run and the step plugins
`cprec train` uses; the two runs' steps alternate so both see the same machine state. The
ldp step includes setting the learned bits, the gradient into p, and the p update:

    python scripts/bench_ldp.py [--steps 20] [--batch 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cprec.config import DatasetConfig, ScheduleConfig, TrainConfig, TrainerConfig
from cprec.engine.build import build_run
from cprec.engine.memory import keep_freed_memory
from cprec.engine.step import TrainStep
from cprec.engine.trainer import step_plugins


def _stepper(schedule: ScheduleConfig, args: argparse.Namespace):
    cfg = TrainConfig(dataset=DatasetConfig(name="synthetic", num_train=4096),
                      schedule=schedule, trainer=TrainerConfig(batch_size=args.batch, steps=1000,
                                                               threads=args.threads))
    parts = build_run(cfg)
    step = TrainStep(parts.task, parts.model, parts.optimizer, step_plugins(parts))
    counter = [0]

    def one() -> float:
        t0 = time.perf_counter()
        parts.precision.apply(counter[0])
        step(parts.task.next_batch())
        counter[0] += 1
        return time.perf_counter() - t0

    return one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    keep_freed_memory()
    static = _stepper(ScheduleConfig(name="static", kind="static"), args)
    ldp = _stepper(ScheduleConfig(name="ldp", kind="ldp", bounds="config", p_init=0.5), args)
    times: dict[str, list[float]] = {"static": [], "ldp": []}
    for i in range(args.steps + 3):  # 3 warm-up steps each
        for name, fn in (("static", static), ("ldp", ldp)):
            t = fn()
            if i >= 3:
                times[name].append(t)
    s, d = statistics.median(times["static"]), statistics.median(times["ldp"])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ResNet-20 batch {args.batch}")
    print(f"median step: static 8/8 {s * 1e3:.1f} ms, ldp {d * 1e3:.1f} ms, ratio {d / s:.3f}x "
          f"(target <= 1.2x)")


if __name__ == "__main__":
    main()
