"""Training-step time of quantized ResNet-20 (and an LSTM LM) on integer GEMMs
(``quant.kernels=int8``) and simulated, each divided by the fp32 step, in one process.

Modes, each the same model and batch: ``fp32`` (an unquantized copy), ``simulated`` and
``int8`` at static 8/8, and both again at CPT 3..8/8 (each step's forward bits drawn from
CPT's cosine cycle, errors at 8). Rounds alternate the order of the modes so drifting load
hits all alike; printed: the median per-round ratio to fp32 (issue target for int8 CPT on
this CPU: <= 0.7) and, from one profiled int8 step, where its time goes (integer GEMMs,
float GEMMs, quantization, im2col and code conversion, the rest).

    python scripts/bench_int8.py [--rounds 7] [--steps-per-round 3] [--batch 128]
                                 [--model resnet20|lstm] [--threads N] [--kernels int8|auto]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import ModelConfig, QuantConfig
from cprec.engine.memory import keep_freed_memory
from cprec.models import build_model
from cprec.quant import build_quantized, set_precision
from cprec.quant.int8_layers import gemm_counts
from cprec.tasks.base import DatasetInfo

# profiler op name -> what it is (the int8 path's own ops, then the float ones)
CATEGORIES = {"aten::_int_mm": "int8 GEMM (weight gradients, 8-bit forward without oneDNN)",
              "onednn::qconv2d_pointwise": "int8 convolution (oneDNN, forward)",
              "onednn::qconv_prepack": "int8 convolution (oneDNN, forward)",
              "aten::mm": "float GEMM", "aten::addmm": "float GEMM",
              "aten::convolution_backward": "float GEMM (input gradients; fp32: all)",
              "aten::mkldnn_convolution": "float GEMM (input gradients; fp32: all)",
              "aten::copy_": "copies (im2col, layouts)", "aten::constant_pad_nd": "copies (im2col, layouts)",
              "aten::native_batch_norm": "batch norm", "aten::native_batch_norm_backward": "batch norm"}


def cpt_bits(step: int, steps: int = 64, lo: int = 3, hi: int = 8) -> int:
    """CPT's cosine cycle (one cycle per ``steps``): lo at its start, hi at its end."""
    t = (step % steps) / steps
    return round(lo + 0.5 * (hi - lo) * (1 - math.cos(math.pi * t)))


def model_and_batch(name: str, batch: int, kernels: str) -> tuple[nn.Module, Callable[[], torch.Tensor]]:
    torch.manual_seed(0)
    if name == "lstm":
        info = DatasetInfo("tiny_shakespeare", 1, 35, 65)
        cfg = ModelConfig(name="lstm", hidden=128)
        tokens = torch.randint(0, 65, (batch, 36))
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
    else:
        info = DatasetInfo("bench", 3, 32, 10)
        cfg = ModelConfig(name="resnet20")
        inputs, targets = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    base = build_model(cfg, info)
    if kernels == "fp32":
        model = base
    else:
        model, _ = build_quantized(base, QuantConfig(kernels=kernels), seed=0)
    model.train()

    def loss() -> torch.Tensor:
        out = model(inputs)
        out = out[0] if isinstance(out, tuple) else out
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))

    return model, loss


def make_step(kernels: str, schedule: str, args) -> tuple[Callable[[], None], nn.Module]:
    model, loss = model_and_batch(args.model, args.batch, kernels)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    counter = [0]

    def step() -> None:
        if kernels != "fp32":
            fw = 8 if schedule == "static" else cpt_bits(counter[0])
            set_precision(model, fw, 8)
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    return step, model


def timed(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def breakdown(step: Callable[[], None]) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    parts: dict[str, float] = {}
    for e in prof.key_averages():
        what = CATEGORIES.get(e.key, "rest (quantization and code kernels, ReLU, optimizer, ...)")
        parts[what] = parts.get(what, 0.0) + e.self_cpu_time_total
    print("one int8 CPT step, by op (self CPU time, profiled):")
    for what, t in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {what:55s} {t / 1e3:8.1f} ms  {t / total:6.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "lstm"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--kernels", default="int8", choices=["int8", "auto"],
                    help="the integer modes' quant.kernels (auto: small GEMMs stay simulated)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    k = args.kernels
    modes = {"fp32": ("fp32", "static"), "simulated 8/8": ("simulated", "static"),
             f"{k} 8/8": (k, "static"), "simulated CPT 3..8/8": ("simulated", "cpt"),
             f"{k} CPT 3..8/8": (k, "cpt")}
    steps = {name: make_step(*mode, args) for name, mode in modes.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.model}, "
          f"batch {args.batch}")
    for step, _ in steps.values():
        timed(step, 2)  # warm-up: kernels built, allocator settled
    times: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(args.rounds):
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for name in order:
            times[name].append(timed(steps[name][0], args.steps_per_round))
    ratios = {name: statistics.median(t / f for t, f in zip(times[name], times["fp32"])) for name in modes}
    for name in modes:
        print(f"{name:22s} {statistics.median(times[name]) * 1e3:8.1f} ms/step   "
              f"/ fp32 {ratios[name]:.3f}")
    print(f"{k} CPT GEMMs:", gemm_counts(steps[f"{k} CPT 3..8/8"][1]))
    breakdown(steps[f"{k} CPT 3..8/8"][0])


if __name__ == "__main__":
    main()
