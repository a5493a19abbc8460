"""The picture of a scaled recipe's telemetry in `cprec report`: the run-mean SQNR of every
quantized layer and GEMM operand (a layer x operand heatmap, from summary.json's
``quant_telemetry``; the run must have had ``quant.telemetry=true``)."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from cprec.report.plots import _save

OPERANDS = ("forward.w", "forward.x", "input_grad.w", "input_grad.dy", "weight_grad.dy",
            "weight_grad.x")


def _sqnr(figures: dict | None) -> float:
    value = (figures or {}).get("sqnr_db")
    return math.nan if value is None else float(value)


def sqnr_heatmap(summary: dict, label: str, path: Path) -> bool:
    """SQNR in dB per layer (rows) and operand (columns), each cell printed; blank where an
    operand is not quantized (a high-precision GEMM, no input gradient for the first layer).
    False when the run has no telemetry."""
    per_layer = summary.get("quant_telemetry")
    if not isinstance(per_layer, dict) or not per_layer:
        return False
    names = list(per_layer)
    grid = [[_sqnr(per_layer[n].get(op)) for op in OPERANDS] for n in names]
    finite = [v for row in grid for v in row if math.isfinite(v)]
    if not finite:
        return False
    fig = Figure(figsize=(8, 1.6 + 0.3 * len(names)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                      vmin=min(finite), vmax=max(finite))
    middle = (min(finite) + max(finite)) / 2
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if math.isfinite(v):  # dark text on the light (high) end of viridis
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                        color="black" if v > middle else "white")
    ax.set_xticks(range(len(OPERANDS)), OPERANDS, fontsize=7, rotation=20)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set(xlabel="GEMM operand", ylabel="layer")
    fig.colorbar(image, ax=ax, label="SQNR (dB), run mean", pad=0.01)
    fig.suptitle(f"{label}  seed {summary.get('seed', '?')}", fontsize=10)
    _save(fig, path)
    return True
