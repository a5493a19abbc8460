"""The GPU path checked on a CUDA machine, in one command:

1. kernels: every quantization kernel's GPU back end (torch.compile of the reference)
   returns bitwise what the reference torch functions return on the same CUDA tensors;
2. exact resume: a CUDA run SIGTERMed after its first checkpoint and resumed ends with the
   same summary and metrics (timings aside) as an uninterrupted run; with 2+ GPUs, a
   2-process NCCL run (trainer.devices=2) counts the same GBitOPs as 1 process, and so do
   a generated ImageFolder (with SyncBatchNorm too) and the Tiny Shakespeare LSTM;
3. speed: quantized (static 8/8) vs fp32 step time of ResNet-20 at batch 128
   (scripts/bench_quant.py; target <= 1.05x on an H100), and AMP (bf16, fp16) against fp32
   in samples/s of real `cprec train` runs.

    python scripts/gpu_check.py [--out /tmp/gpu-check] [--skip-speed]

Without a CUDA device it says so in one line and exits 0 having checked nothing. Exit 1 if
a check failed. Run from the repository root (or with cprec installed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("train_time_s", "wall_time_s")
RUN = ["model=resnet20", "dataset=synthetic", "trainer.batch_size=128", "trainer.steps=60",
       "trainer.eval_every=20", "trainer.checkpoint_every=5", "trainer.progress=false",
       "trainer.device=cuda", "schedule.cycles=4"]


def cli(args: list[str], cwd: Path, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "cprec.cli", *args]
    if wait:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def check_kernels() -> list[str]:
    """Compiled (GPU back end) vs reference, bitwise, on CUDA tensors; the failures."""
    from cprec.quant import backends
    from cprec.quant import reference as r
    from cprec.quant.backends import TORCH_COMPILE

    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 16, 32, 32, generator=gen) * 3 + 0.5).to(dev)
    w = torch.randn(32, 16, 3, 3, generator=gen).to(dev)
    lo, hi = torch.tensor(-1.5, device=dev), torch.tensor(2.5, device=dev)
    key = torch.tensor(12345, dtype=torch.int32, device=dev)
    failures = []
    for bits in (2, 4, 8, 16):
        lv = torch.tensor(float(2**bits - 1), device=dev)
        cases = [(r.quant_stochastic, (x, key, lv))]
        for zero_exact in (True, False):
            cases += [(r.quant_tensor_batch_range, (x, lv, zero_exact)),
                      (r.quant_tensor_given_range, (x, lo, hi, lv, zero_exact)),
                      (r.quant_per_channel, (w, lv, zero_exact)),
                      (r.quant_inputs_batch_range, (x, w, lv, zero_exact)),
                      (r.quant_inputs_given_range, (x, w, lo, hi, lv, zero_exact))]
        for fn, args in cases:
            ref, fast = fn(*args), backends.implementations(fn)[TORCH_COMPILE](*args)
            same = all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(ref, fast))
            if backends._state.compile_failed:
                return ["torch.compile failed on this machine: nothing compared"]
            if not same:
                failures.append(f"{fn.__name__} bits={bits} args[-1]={args[-1]}")
    print(f"kernels: {'all bitwise equal to the reference' if not failures else failures}")
    return failures


def results(run_dir: Path) -> tuple[dict, list[dict]]:
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items()
               if k not in TIMING}
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics


def check_resume(out: Path) -> list[str]:
    """SIGTERM after the first checkpoint, resume, compare with an uninterrupted run."""
    ref = cli(["train", *RUN, f"hydra.run.dir={out / 'ref'}"], out)
    if ref.returncode != 0:
        return [f"uninterrupted run failed: {ref.stderr[-500:]}"]
    proc = cli(["train", *RUN, f"hydra.run.dir={out / 'run'}"], out, wait=False)
    while not (out / "run" / "checkpoint.pt").exists() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=300)
    again = cli(["train", f"resume={out / 'run'}"], out)
    if again.returncode != 0:
        return [f"resume failed: {again.stderr[-500:]}"]
    same = results(out / "run") == results(out / "ref")
    print(f"exact resume on CUDA: {'yes' if same else 'NO'}")
    failures = [] if same else ["a resumed CUDA run differs from the uninterrupted run"]
    if torch.cuda.device_count() >= 2:
        two = cli(["train", *RUN, "trainer.devices=2", f"hydra.run.dir={out / 'two'}"], out)
        if two.returncode != 0:
            return [*failures, f"2-GPU run failed: {two.stderr[-500:]}"]
        g1, g2 = (results(out / d)[0]["gbitops"] for d in ("ref", "two"))
        print(f"2 GPUs (NCCL): GBitOPs {g2} vs 1 GPU {g1}")
        failures += [] if g1 == g2 else ["2-GPU GBitOPs differ from 1 GPU"]
    return failures


def check_data_parallel(out: Path) -> list[str]:
    """2 GPUs: ImageFolder (plain and trainer.sync_bn=true) and the LSTM count the GBitOPs of
    1 GPU (issue 24); figures of the final metric beside them."""
    if torch.cuda.device_count() < 2:
        return []
    from cprec.tasks.imagefolder import generate_folder

    toy = generate_folder(out / "toy", 3, 32, 8, size=(96, 80))
    kinds = {"imagefolder": ["experiment=imagenet_resnet18", f"dataset.root={toy}", "dataset.image_size=64",
                             "dataset.resize=73", "trainer.epochs=2", "trainer.batch_size=16"],
             "lstm": ["experiment=shakespeare_lstm", "trainer.steps=100", "trainer.eval_every=100"]}
    failures = []
    for name, args in kinds.items():
        runs = {"1": [], "2": ["trainer.devices=2"]}
        if name == "imagefolder":  # BatchNorm: the global batch's statistics
            runs["2-syncbn"] = ["trainer.devices=2", "trainer.sync_bn=true"]
        gbitops = {}
        for label, extra in runs.items():
            done = cli(["train", *args, *extra, "trainer.device=cuda", "trainer.progress=false",
                        f"hydra.run.dir={out / f'{name}-{label}'}"], out)
            if done.returncode != 0:
                failures.append(f"{name} on {label} GPU(s) failed: {done.stderr[-500:]}")
                continue
            s = results(out / f"{name}-{label}")[0]
            gbitops[label] = s["gbitops"]
            print(f"{name} {label} GPU(s): GBitOPs {s['gbitops']}, final "
                  f"{s.get('final_ppl', s.get('final_acc'))}")
        if len(set(gbitops.values())) > 1:
            failures.append(f"{name}: 2-GPU GBitOPs differ from 1 GPU: {gbitops}")
    return failures


def check_speed(out: Path) -> None:
    """Quantized/fp32 step-time ratio (bench_quant.py) and AMP samples/s; figures, no verdict."""
    bench = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_quant.py"), "--device", "cuda",
                            "--batch", "128"], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    print("quantized vs fp32 (ResNet-20, batch 128):", bench.stdout.strip().splitlines()[-1:]
          or bench.stderr[-500:])
    speed = {}
    for amp in ("off", "bf16", "fp16"):
        run = out / f"amp-{amp}"
        done = cli(["train", *RUN, "trainer.steps=200", "trainer.eval_every=200", "schedule=fp32",
                    f"amp={amp}", f"hydra.run.dir={run}"], out)
        if done.returncode != 0:
            print(f"amp={amp}: failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        s = json.loads((run / "summary.json").read_text())
        speed[amp] = s["steps"] * 128 / s["train_time_s"]
        print(f"amp={amp}: {speed[amp]:.0f} samples/s"
              + (f" ({speed[amp] / speed['off']:.2f}x fp32)" if "off" in speed and amp != "off" else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/gpu-check", help="run dirs go here")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); "
              "nothing was checked")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}")
    failures = check_kernels() + check_resume(out) + check_data_parallel(out)
    if not args.skip_speed:
        check_speed(out)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
