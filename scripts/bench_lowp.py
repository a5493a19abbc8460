"""Low-precision weights: memory of weights + optimizer state, and step time, in one process.

ResNet-20 (fp32 schedule), batch 128, CIFAR-shaped synthetic data, SGD with momentum:
  fp32        float32 weights (torch.optim.SGD): the baseline
  bf16-sim    bf16 values in float32 tensors, Kahan buffers likewise (optim.weight_format=bf16)
  bf16-real   real torch.bfloat16 weights and Kahan buffers (optim.real_dtype=true)
Rounds alternate between the variants so a busy machine slows all alike:

    python scripts/bench_lowp.py [--rounds 5] [--steps 5] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cprec.config import DatasetConfig, OptimConfig, TrainConfig, TrainerConfig
from cprec.engine.build import build_model_parts
from cprec.engine.memory import keep_freed_memory
from cprec.engine.step import TrainStep
from cprec.quant import set_precision

VARIANTS = {
    "fp32": OptimConfig(),
    "bf16-sim": OptimConfig(weight_format="bf16", update_rounding="kahan"),
    "bf16-real": OptimConfig(weight_format="bf16", update_rounding="kahan", real_dtype=True),
}


def state_bytes(parts) -> tuple[int, int]:
    """(bytes of the parameters, bytes of the optimizer state tensors)."""
    params = sum(p.numel() * p.element_size() for p in parts.model.parameters())
    state = sum(t.numel() * t.element_size() for s in parts.optimizer.state.values()
                for t in s.values() if isinstance(t, torch.Tensor))
    return params, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    keep_freed_memory()
    runs = {}
    for name, optim in VARIANTS.items():
        cfg = TrainConfig(dataset=DatasetConfig(name="synthetic", augment=True, num_train=4096),
                          trainer=TrainerConfig(device="cpu", batch_size=args.batch), optim=optim)
        parts = build_model_parts(cfg, args.batch)
        set_precision(parts.model, 32, 32)
        step = TrainStep(parts.task, parts.model, parts.optimizer)
        step(parts.task.next_batch())  # warm-up, creates the optimizer state
        runs[name] = (parts, step, [])
    for _ in range(args.rounds):
        for parts, step, times in runs.values():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(parts.task.next_batch())
            times.append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(runs["fp32"][2])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ResNet-20 batch {args.batch}, "
          f"{args.rounds} rounds x {args.steps} steps")
    for name, (parts, _, times) in runs.items():
        params, state = state_bytes(parts)
        median = statistics.median(times)
        print(f"{name:10s} weights {params / 1024:7.1f} KiB  optimizer state {state / 1024:7.1f} KiB  "
              f"step {median * 1e3:6.1f} ms  ({median / base:.2f}x fp32)")


if __name__ == "__main__":
    main()
