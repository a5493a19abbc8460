"""Calibrate the precision range test: does its lower bound repeat over seeds, at what cost?

For each dataset and each PRT setting (a comma-separated list of ``prt.*`` overrides), run
the PRT of ``--model`` once per seed, in this process, through the code `cprec prt` uses
(``run_prt``), and print one markdown row: the lower bound per seed, how many seeds agree
with the most common bound, the PRT's training GBitOPs (its own ledger, priced like a run's)
and its share of the run it serves, and its wall time. The run it serves is the default
`cprec train schedule=cpt_cosine model=<model> dataset=<d>` (default trainer length,
bounds 3..8 from the config); its GBitOPs are computed from its schedule without training,
its training-step time is ``--time-steps`` timed steps times its step count.

    python scripts/prt_calibration.py                                   # the README's table
    python scripts/prt_calibration.py --datasets digits --seeds 0 1 \\
        --settings steps_per_bits=20,batch_size=32,smoothing=5            # a quick check

Run from the repository root with OMP_NUM_THREADS=1 (``--threads`` sets torch's threads).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's cprec

# today's default first, then candidates: more samples per level (steps, batch) and a
# longer smoothing window, priced against the 2% budget
DEFAULT_SETTINGS = [
    "steps_per_bits=20,batch_size=32,smoothing=5",
    "steps_per_bits=20,batch_size=32,smoothing=10",
    "steps_per_bits=20,batch_size=32,smoothing=20",
    "steps_per_bits=30,batch_size=32,smoothing=15",
    "steps_per_bits=20,batch_size=64,smoothing=10",
    "steps_per_bits=40,batch_size=32,smoothing=20",
]


def compose(overrides: list[str], config_name: str):
    """The typed config the CLI would build from ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cprec.config import register_schemas, to_train_config
    from cprec.paths import config_dir

    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return to_train_config(hydra_compose(config_name=config_name, overrides=overrides))


def served_run(model: str, dataset: str, threads: int, time_steps: int) -> dict:
    """GBitOPs, steps and estimated training-step seconds of the default CPT run."""
    from cprec.build import build_run
    from cprec.quant import quant_layers, set_precision
    from cprec.schedules import relative_cost_of
    from cprec.step import TrainStep

    cfg = compose([f"model={model}", f"dataset={dataset}", "schedule=cpt_cosine",
                   "schedule.bounds=config", f"trainer.threads={threads}"], "train")
    parts = build_run(cfg)
    macs, total = parts.ledger.macs, parts.total_steps
    rel = relative_cost_of(parts.plan.schedule, macs, set(quant_layers(parts.model)))
    fp32 = total * parts.task.batch_size * sum(macs.values()) * 32 * 32 * 3
    step = TrainStep(parts.task, parts.model, parts.optimizer)
    lo, hi = parts.plan.schedule.fw_range
    set_precision(parts.model, (lo + hi) // 2, cfg.schedule.bw_bits)
    times = []
    for i in range(time_steps + 2):  # two warm-up steps
        batch = parts.task.next_batch()
        t0 = time.perf_counter()
        step(batch)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"steps": total, "gbitops": rel * fp32 / 1e9, "relative_cost": rel, "step_s": step_s,
            "train_time_s": step_s * total}


def one_prt(model: str, dataset: str, seed: int, setting: str, threads: int, root: Path) -> dict:
    """One PRT: lower/upper bits (None when none is found), GBitOPs, steps, wall seconds."""
    from cprec.errors import CprecError
    from cprec.range_test import run_prt

    prt = [f"prt.{kv}" for kv in setting.split(",") if kv]
    cfg = compose([f"model={model}", f"dataset={dataset}", f"seed={seed}", *prt,
                   f"trainer.threads={threads}", "trainer.progress=false",
                   f"output_root={root}"], "prt")
    out = root / f"{dataset}-{seed}-{setting}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        r = run_prt(cfg, out)
    except CprecError:
        return {"seed": seed, "lower_bits": None, "wall_s": time.perf_counter() - t0}
    return {"seed": seed, "lower_bits": r["lower_bits"], "upper_bits": r["upper_bits"],
            "gbitops": r["gbitops"], "steps": r["steps"], "wall_s": time.perf_counter() - t0,
            "curve": r["curve"]}


def row(dataset: str, setting: str, runs: list[dict], served: dict) -> str:
    """One markdown row of the calibration table."""
    bounds = [r["lower_bits"] for r in runs]
    agree = Counter(bounds).most_common(1)[0][1]
    g = [r["gbitops"] for r in runs if r["lower_bits"] is not None] or [float("nan")]
    wall = [r["wall_s"] for r in runs]
    share = [100 * x / served["gbitops"] for x in g]
    per_seed = " ".join("-" if b is None else str(b) for b in bounds)
    return (f"| {dataset} | {setting.replace(',', ' ')} | {per_seed} | {agree}/{len(runs)} | "
            f"{statistics.mean(g):.4g} (max {max(g):.4g}) | {statistics.mean(share):.2f} "
            f"(max {max(share):.2f}) | {statistics.mean(wall):.1f} | "
            f"{100 * statistics.mean(wall) / served['train_time_s']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                    help="each a comma-separated list of prt.* overrides (without 'prt.')")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-steps", type=int, default=10, help="timed steps of the served run")
    ap.add_argument("--json", type=Path, help="also write every PRT's result here")
    args = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="prt-calibration-") as tmp:
        for dataset in args.datasets:
            served = served_run(args.model, dataset, args.threads, args.time_steps)
            print(f"\nserved run: {args.model} on {dataset}, cpt_cosine 3..8/8, {served['steps']} "
                  f"steps, {served['gbitops']:.6g} GBitOPs, ~{served['train_time_s']:.0f} s of "
                  f"training steps ({served['step_s'] * 1000:.0f} ms/step)\n", flush=True)
            print("| dataset | setting | lower bits per seed | agree | PRT GBitOPs | % of run | "
                  "PRT wall s | % of run's step time |\n|---|---|---|---|---:|---:|---:|---:|")
            for setting in args.settings:
                runs = [one_prt(args.model, dataset, s, setting, args.threads, Path(tmp))
                        for s in args.seeds]
                print(row(dataset, setting, runs, served), flush=True)
                records.append({"dataset": dataset, "setting": setting, "served": served, "runs": runs})
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
