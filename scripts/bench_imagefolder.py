"""dataset=imagefolder: the data pipeline's share of the training step, per worker count.

Writes a generated ImageFolder (random JPEGs of about ImageNet's mean size, 500 x 375 by
default) into a temporary folder, then trains a torchvision model on it through the set-up
(build.build_model_parts) and the step (step.TrainStep) `cprec train` uses, at fp32 (the
cheapest step, so the largest data share). Per step it times (a) the wait for the next
batch (``task.next_batch()``: decode, crop, flip in the workers, normalise on the device)
and (b) forward, backward and update, in one process:

    python scripts/bench_imagefolder.py [--workers 0 2] [--arch resnet18] [--image-size 224]
        [--batch 16] [--steps 8] [--threads 1] [--device auto]

Noise JPEGs decode a little slower than photographs of the same size (less compressible).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from bench_train import time_steps  # scripts/ is on sys.path when run as a script

from cprec.config import DatasetConfig, ModelConfig, TrainConfig, TrainerConfig
from cprec.engine.build import build_model_parts
from cprec.engine.step import TrainStep
from cprec.quant import set_precision
from cprec.tasks.imagefolder import generate_folder

WARMUP = 2  # steps not timed (the first one starts the workers)


def measure(root: Path, workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(median step seconds, data wait share of the summed step time) over args.steps steps."""
    cfg = TrainConfig(
        model=ModelConfig(name="torchvision", arch=args.arch),
        dataset=DatasetConfig(name="imagefolder", root=str(root), augment=True,
                              image_size=args.image_size, resize=round(args.image_size * 8 / 7),
                              workers=workers),
        trainer=TrainerConfig(device=args.device, batch_size=args.batch, threads=args.threads))
    parts = build_model_parts(cfg, args.batch)
    set_precision(parts.model, 32, 32)  # schedule=fp32
    step = TrainStep(parts.task, parts.model, parts.optimizer)
    waits, steps = time_steps(parts.task, step, parts.device, args.steps, WARMUP)
    return statistics.median(steps), sum(waits) / sum(steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--source", default="500x375", help="generated JPEG size, WxH")
    args = ap.parse_args()
    w, h = (int(v) for v in args.source.split("x"))
    with tempfile.TemporaryDirectory(prefix="cprec-bench-imagefolder-") as tmp:
        per_class = -(-args.batch * (args.steps + WARMUP) // 4)  # one epoch covers the run
        root = generate_folder(Path(tmp), 4, per_class, 1, size=(w, h))
        print(f"torch {torch.__version__}, {args.arch} at {args.image_size}px, batch {args.batch}, "
              f"fp32, {args.threads} training thread(s), {4 * per_class} generated {w}x{h} JPEGs")
        for workers in args.workers:
            median, share = measure(root, workers, args)
            print(f"dataset.workers={workers}: median step {median * 1e3:.0f} ms "
                  f"({args.batch / median:.1f} images/s); waiting for data {share * 100:.1f}% of step time")


if __name__ == "__main__":
    main()
