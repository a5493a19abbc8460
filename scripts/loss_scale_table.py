"""The loss-scaling evidence table (README "Loss scaling") from one or more sweep dirs.

Groups the runs by their overrides without the seed and prints, per group, the mean and
sample std of final accuracy, the run's underflow and overflow rates (of the nonzero errors,
all quantized layers pooled) and the skipped steps, as a markdown table:

    python scripts/loss_scale_table.py <sweep dir> [<sweep dir> ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml

KEYS = ("final_acc", "underflow_rate", "overflow_rate", "skipped_steps")


def group_of(run: Path) -> str:
    """The run's overrides, minus the seed and the settings shared by the whole table."""
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    skip = ("seed=", "trainer.", "loss_scale.telemetry=", "schedule=")
    return " ".join(o for o in overrides if not o.startswith(skip))


def cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if all(isinstance(v, int) for v in values):
        return f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.4f} ± {std:.4f}" if mean >= 0.01 else f"{mean:.2g} ± {std:.1g}"


def main(dirs: list[str]) -> None:
    groups: dict[str, list[dict]] = {}
    for d in dirs:
        for summary in sorted(Path(d).glob("*/summary.json")):
            groups.setdefault(group_of(summary.parent), []).append(json.loads(summary.read_text()))
    print("| runs | n | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for name, runs in groups.items():
        done = [r for r in runs if r["status"] == "completed"]
        print(f"| `{name}` | {len(done)}/{len(runs)} | "
              + " | ".join(cell([r.get(k) for r in done]) for k in KEYS) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
