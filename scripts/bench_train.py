"""fp32 ResNet-20 training throughput and the data pipeline's share of the step time.

Measured in one process on CIFAR-shaped synthetic data with CIFAR augmentation (random
crop + flip, batched on the device), through the same BatchStream the trainer uses:

    python scripts/bench_train.py [--steps 20] [--batch 128] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cprec.config import DatasetConfig, ModelConfig, OptimConfig
from cprec.data import BatchStream, build_dataset
from cprec.engine import pick_device
from cprec.memory import keep_freed_memory
from cprec.models import build_model
from cprec.optim import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    keep_freed_memory()  # as `cprec train` does
    device = pick_device(args.device)
    torch.manual_seed(0)
    data = build_dataset(DatasetConfig(name="synthetic", augment=True, num_train=4096)).to(device)
    stream = BatchStream(data, args.batch, seed=0, device=device)
    model = build_model(ModelConfig(name="resnet20"), data.info).to(device).train()
    opt = build_optimizer(model, OptimConfig())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    data_times, step_times = [], []
    for i in range(args.steps + 3):  # 3 warm-up steps
        sync()
        t0 = time.perf_counter()
        x, y = stream.next()
        sync()
        t1 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if i >= 3:
            data_times.append(t1 - t0)
            step_times.append(t2 - t0)
    step = statistics.median(step_times)
    share = sum(data_times) / sum(step_times)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(f"fp32 ResNet-20, batch {args.batch}, 3x32x32, augmented: median step {step * 1e3:.1f} ms, "
          f"{args.batch / step:.0f} images/s; data pipeline {share * 100:.2f}% of step time")


if __name__ == "__main__":
    main()
