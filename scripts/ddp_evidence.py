"""Issue 24's evidence: each newly data-parallel kind of run, 1 process against 2 (gloo, CPU),
the same global batch: final metric, GBitOPs and what the ranks must agree on.

    OMP_NUM_THREADS=1 python scripts/ddp_evidence.py [--out /tmp/ddp-evidence] [--only NAME ...]

Prints a markdown table (docs/runs/data-parallel.md, "Measured"). Each run is an ordinary
`cprec train` command, printed above the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

COMMON = ["trainer.progress=false"]
KINDS = {
    "imagefolder": ["experiment=imagenet_resnet18", "dataset.root={toy}", "dataset.image_size=64",
                    "dataset.resize=73", "trainer.epochs=3", "trainer.batch_size=16", "schedule.cycles=3"],
    "lstm": ["experiment=shakespeare_lstm", "trainer.steps=150", "trainer.eval_every=150"],
    "ldp": ["schedule=ldp", "schedule.bounds=config", "trainer.steps=120", "trainer.eval_every=60"],
    "dynamic": ["schedule=static", "quant=fp8_e4m3", "loss_scale=dynamic", "trainer.steps=120",
                "trainer.eval_every=60"],
}


def run(args: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "cprec.cli", "train", *args, *COMMON, f"hydra.run.dir={run_dir}"]
    print("$ cprec train " + " ".join([*args, *COMMON, f"hydra.run.dir={run_dir}"]), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        sys.exit(out.stderr.strip().splitlines()[-1])
    return json.loads((run_dir / "summary.json").read_text())


def agreed(run_dir: Path) -> str:
    """What the two ranks' checkpoint states say they agree on (p, loss scale)."""
    ranks = torch.load(run_dir / "checkpoint.pt", weights_only=False).get("ranks") or []
    if len(ranks) < 2:
        return ""
    notes = []
    if "p" in (ranks[0]["precision"] or {}):
        p = [r["precision"]["p"] for r in ranks]
        notes.append(f"p equal on ranks: {torch.equal(p[0], p[1])}")
    rules = [r["plugins"].get("loss_scale", {}).get("rule") for r in ranks]
    if rules[0]:
        notes.append(f"scale/skips equal on ranks: {rules[0] == rules[1]}")
    return "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ddp-evidence"))
    parser.add_argument("--only", nargs="*", default=list(KINDS))
    opts = parser.parse_args()
    toy = opts.out / "toy"
    if not toy.is_dir():
        from cprec.tasks.imagefolder import generate_folder

        generate_folder(toy, 3, 32, 8, size=(96, 80))
    rows = []
    for name in opts.only:
        args = [a.format(toy=toy) for a in KINDS[name]]
        for n in (1, 2):
            s = run([*args, f"trainer.devices={n}"], opts.out / f"{name}-{n}")
            metric = "final_ppl" if "final_ppl" in s else "final_acc"
            extra = f"skipped {s['skipped_steps']}" if "skipped_steps" in s else ""
            if "layer_bits_final" in s:
                extra = f"bits {list(s['layer_bits_final'].values())}"
            rows.append(f"| {name} | {n} | {metric} {s[metric]:.4f} | {s['gbitops']!r} | "
                        f"{s['train_time_s']:.1f} | {extra} {agreed(opts.out / f'{name}-{n}')} |")
    print("\n| run | processes | final metric | GBitOPs | train s | notes |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
