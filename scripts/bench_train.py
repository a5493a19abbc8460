"""fp32 ResNet-20 training throughput and the data pipeline's share of the step time.

Measured in one process on CIFAR-shaped synthetic data with CIFAR augmentation (random
crop + flip, batched on the device), through the set-up (build.build_model_parts) and the
step (step.TrainStep) `cprec train` uses, at schedule=fp32:

    python scripts/bench_train.py [--steps 20] [--batch 128] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cprec.config import DatasetConfig, TrainConfig, TrainerConfig
from cprec.engine.build import build_model_parts
from cprec.engine.memory import keep_freed_memory
from cprec.engine.step import TrainStep
from cprec.quant import set_precision


def time_steps(task, step: TrainStep, device: torch.device, steps: int, warmup: int
               ) -> tuple[list[float], list[float]]:
    """(seconds waiting for each batch, seconds of each whole step) over ``steps`` training
    steps after ``warmup`` untimed ones (scripts/bench_imagefolder.py uses it too)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    data_times, step_times = [], []
    for i in range(steps + warmup):
        sync()
        t0 = time.perf_counter()
        batch = task.next_batch()
        sync()
        t1 = time.perf_counter()
        step(batch)
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            data_times.append(t1 - t0)
            step_times.append(t2 - t0)
    return data_times, step_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    keep_freed_memory()  # as `cprec train` does
    cfg = TrainConfig(dataset=DatasetConfig(name="synthetic", augment=True, num_train=4096),
                      trainer=TrainerConfig(device=args.device, batch_size=args.batch))
    parts = build_model_parts(cfg, args.batch)  # the set-up `cprec train` uses
    device, task = parts.device, parts.task
    set_precision(parts.model, 32, 32)  # schedule=fp32
    step = TrainStep(task, parts.model, parts.optimizer)
    data_times, step_times = time_steps(task, step, device, args.steps, warmup=3)
    median = statistics.median(step_times)
    share = sum(data_times) / sum(step_times)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"fp32 ResNet-20, batch {args.batch}, 3x32x32, augmented: median step {median * 1e3:.1f} ms, "
          f"{args.batch / median:.0f} images/s; data pipeline {share * 100:.2f}% of step time")


if __name__ == "__main__":
    main()
