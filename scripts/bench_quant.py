"""Training-step time of quantized (static 8/8) ResNet-20 against fp32, in one process.

The same converted model runs alternately at 8/8 (weights, activations and errors
fake-quantized) and at 32/32 (every Q layer a no-op, i.e. the plain fp32 step), or against a
separate unquantized model (``--baseline plain``), or against the same 8/8 step with layers
reading one tensor (a ResNet block's conv1 and 1x1 shortcut) each quantizing it anew
(``--baseline unshared``: what sharing that quantization saves). After warm-up (which includes building
or compiling the fast quantization kernels), each round times ``--steps-per-round`` SGD
steps of each mode, the order alternating from round to round so drifting machine load hits
both alike; the result is the median over rounds of the per-round ratio quantized / fp32
(DESIGN.md's target: <= 1.10 on CPU). The kernels' back end (cprec.quant.backends) is
printed: native, torch_compile, or reference with ``--reference-kernels``.

    python scripts/bench_quant.py [--rounds 15] [--steps-per-round 5] [--batch 128]
                                  [--reference-kernels] [--default-malloc] [--device auto|cpu|cuda]
                                  [--baseline same|plain|unshared] [--cpt-grid]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import ModelConfig, QuantConfig
from cprec.engine.memory import keep_freed_memory
from cprec.models import build_model
from cprec.quant import backend_for, build_quantized, set_backend, set_precision
from cprec.quant.fixed import share_batch_inputs
from cprec.tasks.base import DatasetInfo


def pick(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return torch.device(device)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              prepare: Callable[[], None]) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        prepare()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    """Seconds per step over ``steps`` steps."""
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps-per-round", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per mode first")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--bits", type=int, default=8, help="static forward = backward bits")
    ap.add_argument("--reference-kernels", "--no-compile", action="store_true",
                    help="run the quantization kernels as the reference torch ops "
                         "(CPREC_KERNELS=reference); default: the fast back ends (auto)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (cprec train tunes it: cprec.engine.memory)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--baseline", default="same", choices=["same", "plain", "unshared"],
                    help="fp32 = the same model at 32/32, or a separate unquantized model; "
                         "unshared: the quantized step without shared input quantization")
    ap.add_argument("--cpt-grid", action="store_true",
                    help="quant.zero_exact=false: CPT's min..max grid for weights and activations")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    set_backend("reference" if args.reference_kernels else "auto")
    malloc = "default" if args.default_malloc or not keep_freed_memory() else "tuned"
    device = pick(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base = "unshared" if args.baseline == "unshared" else "fp32"
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"kernels {backend_for(device)}, malloc {malloc}, batch {args.batch}, "
          f"ResNet-20 {args.bits}/{args.bits} vs {base} ({args.baseline}), "
          f"{'CPT' if args.cpt_grid else 'zero-exact'} grid")

    torch.manual_seed(0)
    info = DatasetInfo("bench", 3, 32, 10)
    model, _ = build_quantized(build_model(ModelConfig(name="resnet20"), info),
                               QuantConfig(zero_exact=not args.cpt_grid), seed=0)
    model.to(device).train()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    shared = share_batch_inputs(0)  # the default number of entries (each step sets its own)

    def quantized(entries: int) -> Callable[[], None]:
        return lambda: (share_batch_inputs(entries), set_precision(model, args.bits, args.bits))

    quant_step = make_step(model, x, y, quantized(shared))
    if args.baseline == "plain":
        plain = build_model(ModelConfig(name="resnet20"), info).to(device).train()
        fp32_step = make_step(plain, x, y, lambda: None)
    elif args.baseline == "unshared":
        fp32_step = make_step(model, x, y, quantized(0))
    else:
        fp32_step = make_step(model, x, y, lambda: set_precision(model, 32, 32))

    start = time.perf_counter()
    timed(quant_step, args.warmup, sync)  # first call builds or compiles the kernels
    timed(fp32_step, args.warmup, sync)
    print(f"warm-up {time.perf_counter() - start:.1f} s; kernels ran on the "
          f"{backend_for(device)} back end")  # after a failed build: the fallback

    ratios, q_times, f_times = [], [], []
    for r in range(args.rounds):
        if r % 2 == 0:
            tq = timed(quant_step, args.steps_per_round, sync)
            tf = timed(fp32_step, args.steps_per_round, sync)
        else:
            tf = timed(fp32_step, args.steps_per_round, sync)
            tq = timed(quant_step, args.steps_per_round, sync)
        q_times.append(tq)
        f_times.append(tf)
        ratios.append(tq / tf)
        print(f"round {r + 1}: {args.bits}/{args.bits} {tq * 1e3:7.1f} ms/step   "
              f"{base} {tf * 1e3:7.1f} ms/step   ratio {tq / tf:.3f}")
    target = " (target <= 1.10)" if base == "fp32" else ""
    print(f"median: {args.bits}/{args.bits} {statistics.median(q_times) * 1e3:.1f} ms/step, "
          f"{base} {statistics.median(f_times) * 1e3:.1f} ms/step, "
          f"ratio quantized/{base} {statistics.median(ratios):.3f}{target}")


if __name__ == "__main__":
    main()
