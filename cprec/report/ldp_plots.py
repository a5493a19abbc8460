"""The picture of a learned precision run (ldp, cpt_ldp) in `cprec report`: forward bits of
every quantized layer at every evaluation (a layer x step heatmap, from metrics.jsonl's
``layer_bits``) and the final bits per layer (summary.json's ``layer_bits_final``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from cprec.engine.runs import read_metrics
from cprec.report.plots import _save


def layer_bits_heatmap(run_dir: Path, summary: dict, label: str, path: Path) -> bool:
    """Heatmap (left) and final bits per layer (right); False when there is nothing to draw."""
    records = [r for r in read_metrics(run_dir) if isinstance(r.get("layer_bits"), dict)]
    final = summary.get("layer_bits_final")
    if not records or not isinstance(final, dict):
        return False
    names = list(final)
    grid = [[r["layer_bits"].get(n, float("nan")) for r in records] for n in names]
    steps = [r["step"] for r in records]
    spec = summary.get("schedule_spec") or {}
    lo, hi = spec.get("min_bits", 1), spec.get("max_bits", 8)
    fig = Figure(figsize=(10, 1.5 + 0.22 * len(names)), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[4, 1], sharey=True)
    image = left.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=lo, vmax=hi,
                        extent=(0, len(steps), len(names) - 0.5, -0.5))
    ticks = list(range(0, len(steps), max(1, len(steps) // 8)))
    left.set_xticks([t + 0.5 for t in ticks], [str(steps[t]) for t in ticks])
    left.set_yticks(range(len(names)), names, fontsize=7)
    left.set(xlabel="training step (at each evaluation)", ylabel="layer")
    fig.colorbar(image, ax=left, label="forward bits", pad=0.01)
    right.barh(range(len(names)), [final[n] for n in names], color="C0")
    right.set(xlabel="final bits", xlim=(0, hi + 0.5))
    right.grid(alpha=0.3, axis="x")
    cost = summary.get("achieved_cost")
    target = summary.get("target_cost")
    note = f"  cost {cost:.3f} of max-bits (target {target})" if cost is not None else ""
    fig.suptitle(f"{label}  seed {summary.get('seed', '?')}{note}", fontsize=10)
    _save(fig, path)
    return True
