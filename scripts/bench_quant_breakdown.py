"""Where the quantized training step's extra time goes, on CPU with the C kernels.

ResNet-20 (batch 128, 3x32x32) is timed as in bench_quant.py, in five variants interleaved
in one process (the order reversed every round), each reported as the median over rounds
of its time / the fp32 time of the same round:

- fp32: the converted model at 32/32 (every quantized layer a no-op);
- bookkeeping: 8/8, but both rounding kernels return their input unchanged: what is left is
  the layers' Python, autograd nodes, range EMA and kernel dispatch;
- + input rounding: bookkeeping plus the real activation+weight kernel;
- + error rounding: bookkeeping plus the real stochastic-rounding kernel of the errors;
- 8/8: everything.

    python scripts/bench_quant_breakdown.py [--rounds 16] [--steps-per-round 3]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_quant import make_step, timed  # scripts/ is on sys.path when run as a script

from cprec.config import ModelConfig, QuantConfig
from cprec.engine.memory import keep_freed_memory
from cprec.models import build_model
from cprec.quant import (
    backend_for,
    backends,
    build_quantized,
    native,
    reference,
    set_backend,
    set_precision,
)
from cprec.tasks.base import DatasetInfo

VARIANTS = {  # name: (bits, kernels that run for real)
    "fp32": (32, {"inputs", "errors"}),
    "bookkeeping": (8, set()),
    "+ input rounding": (8, {"inputs"}),
    "+ error rounding": (8, {"errors"}),
    "8/8": (8, {"inputs", "errors"}),
}


def switchable_kernels() -> dict[str, bool]:
    """Register switches as the native versions of the two kernels a training step calls.
    A switched-off kernel returns its input as the quantized one."""
    real = {"inputs": True, "errors": True}
    inputs, errors = native.quant_inputs_batch_range, native.quant_stochastic

    def switched_inputs(x, w, levels, zero_exact=True):
        if real["inputs"]:
            return inputs(x, w, levels, zero_exact)
        return (x, torch.zeros(()), torch.ones(()), None, None, w, None, None)

    def switched_errors(g, key, levels):
        return errors(g, key, levels) if real["errors"] else (g, None)

    backends.register(reference.quant_inputs_batch_range, backends.NATIVE, switched_inputs)
    backends.register(reference.quant_stochastic, backends.NATIVE, switched_errors)
    return real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    set_backend("auto")
    if backend_for("cpu") != backends.NATIVE:
        raise SystemExit("the C kernels could not be built here (no C compiler?)")
    keep_freed_memory()
    real = switchable_kernels()
    torch.manual_seed(0)
    info = DatasetInfo("bench", 3, 32, 10)
    model, _ = build_quantized(build_model(ModelConfig(name="resnet20"), info), QuantConfig(),
                               seed=0)
    model.train()
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    steps = {}
    for name, (bits, on) in VARIANTS.items():
        def prepare(bits: int = bits, on: set = on) -> None:
            set_precision(model, bits, bits)
            real.update(inputs="inputs" in on, errors="errors" in on)
        steps[name] = make_step(model, x, y, prepare)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"kernels {backend_for('cpu')}, "
          f"{args.rounds} rounds x {args.steps_per_round} steps per variant")
    for step in steps.values():
        timed(step, 2, lambda: None)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            times[name].append(timed(steps[name], args.steps_per_round, lambda: None))
    for name, ts in times.items():
        ratio = statistics.median(t / f for t, f in zip(ts, times["fp32"]))
        print(f"{name:18s} {statistics.median(ts) * 1e3:6.1f} ms/step   x{ratio:.3f} of fp32")


if __name__ == "__main__":
    main()
