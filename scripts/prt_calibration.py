"""Calibrate the precision range test: does its lower bound repeat over seeds, at what cost?

For each dataset and each PRT setting (a comma-separated list of ``prt.*`` overrides), run
the PRT of ``--model`` once per seed, in this process, through the code `cprec prt` uses
(``run_prt``), and print one markdown row: the lower bound per seed, how many seeds agree
with the most common bound, the PRT's training GBitOPs (its own ledger, priced like a run's)
and its share of the run it serves, and its wall time. The run it serves is the default
`cprec train schedule=cpt_cosine model=<model> dataset=<d>` (default trainer length,
bounds 3..8 from the config); its GBitOPs are computed from its schedule without training,
its training-step time is ``--time-steps`` timed steps times its step count.

    python3 scripts/prt_calibration.py --control --json /tmp/prt_calibration.json   # README, ~30 min
    python3 scripts/prt_calibration.py --datasets digits --seeds 0 1 \\
        --settings steps_per_bits=20,batch_size=32,smoothing=10                   # a quick check

``--control`` adds, per seed, the gain of a second level at ``prt.start_bits`` (the bits not
raised): how much of the PRT's gain is training progress rather than precision.
Run with OMP_NUM_THREADS=1 (``--threads`` sets torch's threads, default 1).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's cprec

# the old default (20/32/5) first, then candidates (the new default is 20/32/10): more samples
# per level (steps, batch), longer smoothing windows, other thresholds, the auto upper bound
DEFAULT_SETTINGS = [
    "steps_per_bits=20,batch_size=32,smoothing=5",
    "steps_per_bits=10,batch_size=32,smoothing=5",
    "steps_per_bits=20,batch_size=32,smoothing=10",
    "steps_per_bits=20,batch_size=32,smoothing=20",
    "steps_per_bits=30,batch_size=32,smoothing=10",
    "steps_per_bits=20,batch_size=48,smoothing=10",
    "steps_per_bits=16,batch_size=64,smoothing=8",
    "steps_per_bits=40,batch_size=32,smoothing=10",
    "steps_per_bits=20,batch_size=32,smoothing=5,threshold=0.15",
    "steps_per_bits=20,batch_size=32,smoothing=5,threshold=0.3",
    "steps_per_bits=20,batch_size=32,smoothing=5,upper_bits=auto",
    "steps_per_bits=20,batch_size=32,smoothing=10,upper_bits=auto",
    "steps_per_bits=30,batch_size=32,smoothing=10,upper_bits=auto",
    "steps_per_bits=20,batch_size=48,smoothing=10,upper_bits=auto",
]


def compose(overrides: list[str], config_name: str):
    """The typed config the CLI would build from ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cprec.config import register_schemas
    from cprec.paths import config_dir
    from cprec.validate import to_train_config

    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return to_train_config(hydra_compose(config_name=config_name, overrides=overrides))


def served_run(model: str, dataset: str, threads: int, time_steps: int) -> dict:
    """GBitOPs, steps and estimated training-step seconds of the default CPT run."""
    from cprec.engine.build import build_run
    from cprec.engine.step import TrainStep
    from cprec.precision.schedules import relative_cost_of
    from cprec.quant import quant_layers, set_precision

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


def _cfg(model: str, dataset: str, seed: int, setting: str, threads: int, root: Path):
    prt = [f"prt.{kv}" for kv in setting.split(",") if kv]
    return compose([f"model={model}", f"dataset={dataset}", f"seed={seed}", *prt,
                    f"trainer.threads={threads}", "trainer.progress=false",
                    f"output_root={root}"], "prt")


def one_prt(model: str, dataset: str, seed: int, setting: str, threads: int, root: Path) -> dict:
    """One PRT: lower/upper bits (None when none is found), GBitOPs, steps, wall seconds."""
    from cprec.errors import CprecError
    from cprec.precision.range_test import run_prt

    cfg = _cfg(model, dataset, seed, setting, threads, root)
    out = root / f"{dataset}-{seed}-{setting}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        r = run_prt(cfg, out)
    except CprecError:
        return {"seed": seed, "lower_bits": None, "wall_s": time.perf_counter() - t0}
    curve = r["curve"]
    at_lower = next(i for i, c in enumerate(curve) if c["bits"] == r["lower_bits"])
    return {"seed": seed, "lower_bits": r["lower_bits"], "upper_bits": r["upper_bits"],
            "gbitops": r["gbitops"], "steps": r["steps"], "wall_s": time.perf_counter() - t0,
            "gain_at_lower": curve[at_lower]["train_acc"] - curve[at_lower - 1]["train_acc"],
            "curve": curve}


def level_setting(setting: str) -> str:
    """The part of a setting that shapes one level (the control ignores the bound rules)."""
    return ",".join(kv for kv in setting.split(",") if not kv.startswith(("upper_bits=", "threshold=")))


@functools.cache
def control_gain(model: str, dataset: str, seed: int, setting: str, threads: int, root: Path) -> float:
    """The control: the accuracy gain of a second level at ``prt.start_bits`` (bits not raised).

    The PRT's gain at a level is that of one more level of training plus that of one more
    bit; this is the first part alone, on the same seed and settings.
    """
    from cprec.engine.build import build_model_parts
    from cprec.engine.step import TrainStep
    from cprec.precision.range_test import _train_level

    cfg = _cfg(model, dataset, seed, setting, threads, root)
    p = cfg.prt
    parts = build_model_parts(cfg, p.batch_size)
    step = TrainStep(parts.task, parts.model, parts.optimizer)
    a, b = (_train_level(parts, step, p.start_bits, cfg.schedule.bw_bits, p.steps_per_bits,
                         p.smoothing)["train_acc"] for _ in range(2))
    return b - a


def row(dataset: str, setting: str, runs: list[dict], served: dict) -> str:
    """One markdown row of the calibration table."""
    def agree(key: str) -> str:  # seeds on the most common bound; a seed without one never agrees
        values = Counter(r.get(key) for r in runs if r.get(key) is not None)
        return f"{max(values.values(), default=0)}/{len(runs)}"

    ok = [r for r in runs if r["lower_bits"] is not None]
    g = [r["gbitops"] for r in ok] or [float("nan")]
    share = [100 * x / served["gbitops"] for x in g]
    wall = statistics.mean(r["wall_s"] for r in runs)
    auto = "upper_bits=auto" in setting
    per_seed = " ".join("-" if r["lower_bits"] is None else
                        f"{r['lower_bits']}..{r['upper_bits']}" if auto else str(r["lower_bits"])
                        for r in runs)
    gain = min((r["gain_at_lower"] for r in ok), default=float("nan"))
    control = [r["control_gain"] for r in runs if "control_gain" in r]
    control_s = f"{min(control):+.3f}..{max(control):+.3f}" if control else "not run"
    return (f"| {dataset} | {setting.replace(',', ' ')} | {per_seed} | {agree('lower_bits')}"
            f"{' / ' + agree('upper_bits') if auto else ''} | {gain:+.3f} | {control_s} | "
            f"{statistics.mean(g):.4g} (max {max(g):.4g}) | {statistics.mean(share):.2f} "
            f"(max {max(share):.2f}) | {wall:.1f} | {100 * wall / served['train_time_s']:.1f} |")


HEADER = ("| dataset | setting | bounds per seed | agree | min gain at lower | gain holding start_bits |"
          " PRT GBitOPs | % of run | PRT wall s | % of run's step time |\n"
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                    help="each a comma-separated list of prt.* overrides (without 'prt.')")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-steps", type=int, default=10, help="timed steps of the served run")
    ap.add_argument("--control", action="store_true",
                    help="also train two levels at prt.start_bits per seed: the gain without more bits")
    ap.add_argument("--json", type=Path, help="also write every PRT's result here")
    args = ap.parse_args()
    records = []
    with tempfile.TemporaryDirectory(prefix="prt-calibration-") as tmp:
        for dataset in args.datasets:
            served = served_run(args.model, dataset, args.threads, args.time_steps)
            print(f"\nserved run: {args.model} on {dataset}, cpt_cosine 3..8/8, {served['steps']} "
                  f"steps, {served['gbitops']:.6g} GBitOPs, ~{served['train_time_s']:.0f} s of "
                  f"training steps ({served['step_s'] * 1000:.0f} ms/step)\n", flush=True)
            print(HEADER)
            for setting in args.settings:
                runs = [one_prt(args.model, dataset, s, setting, args.threads, Path(tmp))
                        for s in args.seeds]
                for r in runs if args.control else ():
                    r["control_gain"] = control_gain(args.model, dataset, r["seed"], level_setting(setting),
                                                     args.threads, Path(tmp))
                print(row(dataset, setting, runs, served), flush=True)
                records.append({"dataset": dataset, "setting": setting, "served": served, "runs": runs})
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
