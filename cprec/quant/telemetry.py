"""What quantization does to each GEMM operand, counted between evaluations
(``quant.telemetry=true``): the figures Transformer Engine's debug tools report.

Per layer and operand (``forward.w``, ``forward.x``, ``input_grad.w``, ``input_grad.dy``,
``weight_grad.dy``, ``weight_grad.x``), over the training steps since the last evaluation:

- ``sqnr_db``: 10 log10(sum x^2 / sum (x - q)^2), x the high-precision tensor and q its
  quantize-dequantize (summed over all the window's tensors; null when q = x exactly);
- ``flushed``: the fraction of x's nonzero values that q makes zero (underflow);
- ``saturated``: the fraction of values clamped at the element's largest finite value,
  |x| > max_elem * its group's scale (NaN values count neither way);
- ``scale_min`` / ``scale_max``: the smallest and largest dequantization scale used.

The sums stay on the tensor's device (one small float64 vector per operand, no sync in
the step); ``fold`` reads them once per evaluation. Operands without a scale (a plain cast,
fixed point) report no saturation or scales; a GEMM kept in high precision reports nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# slots of the per-operand sums
SIGNAL, NOISE, NONZERO, FLUSHED, SATURATED, COUNT, SMIN, SMAX = range(8)
FIELDS = ("sqnr_db", "flushed", "saturated", "scale_min", "scale_max")


def _empty(device: torch.device) -> torch.Tensor:
    sums = torch.zeros(8, dtype=torch.float64, device=device)
    sums[SMIN], sums[SMAX] = math.inf, -math.inf
    return sums


class OperandTelemetry:
    """The window's sums of every operand of one layer (``add``), and their run means."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.run: dict[str, dict[str, list[float]]] = {}  # operand -> field -> [sum, count]

    def add(self, operand: str, x: torch.Tensor, q: torch.Tensor, groups: torch.Tensor | None,
            scale: torch.Tensor | None, max_value: float) -> None:
        """Count one quantization of ``x`` (its ``groups`` and their ``scale`` when scaled)."""
        if operand not in self.sums:
            self.sums[operand] = _empty(x.device)
        s = self.sums[operand]
        x = x.detach().float()
        nonzero = x != 0
        row = [x.square().sum(), (x - q).square().sum(), nonzero.sum(), (nonzero & (q == 0)).sum()]
        if scale is not None:
            row += [(groups.abs() > max_value * scale).sum()]
        else:
            row += [torch.zeros((), device=x.device)]
        s[:SATURATED + 1] += torch.stack([v.double() for v in row])
        s[COUNT] += x.numel()
        if scale is not None:
            lo, hi = torch.aminmax(scale.detach().float())
            s[SMIN] = torch.fmin(s[SMIN], lo.double())
            s[SMAX] = torch.fmax(s[SMAX], hi.double())

    def fold(self) -> dict[str, dict[str, float | None]]:
        """The window's figures per operand (then the window starts again), added to the
        run means."""
        out = {}
        for operand, s in self.sums.items():
            v = s.tolist()
            out[operand] = {
                "sqnr_db": 10 * math.log10(v[SIGNAL] / v[NOISE]) if v[NOISE] > 0 and v[SIGNAL] > 0
                else None,
                "flushed": v[FLUSHED] / v[NONZERO] if v[NONZERO] else 0.0,
                "saturated": v[SATURATED] / v[COUNT] if v[COUNT] else 0.0,
                "scale_min": v[SMIN] if math.isfinite(v[SMIN]) else None,
                "scale_max": v[SMAX] if math.isfinite(v[SMAX]) else None}
            for name, value in out[operand].items():
                if value is not None:
                    acc = self.run.setdefault(operand, {}).setdefault(name, [0.0, 0])
                    acc[0], acc[1] = acc[0] + value, acc[1] + 1
        self.sums = {}
        return out

    def means(self) -> dict[str, dict[str, float]]:
        """Per operand, each figure's mean over the evaluations so far."""
        return {op: {name: acc[0] / acc[1] for name, acc in fields.items()}
                for op, fields in self.run.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.cpu().clone() for k, v in self.sums.items()},
                "run": {op: {n: list(a) for n, a in f.items()} for op, f in self.run.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.sums = {k: v.to(device).clone() for k, v in state["sums"].items()}
        self.run = {op: {n: list(a) for n, a in f.items()} for op, f in state["run"].items()}


def mean_over_layers(per_layer: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """``{operand: mean sqnr_db over the layers}`` of ``{layer: {operand: figures}}``."""
    values: dict[str, list[float]] = {}
    for operands in per_layer.values():
        for op, figures in operands.items():
            if figures.get("sqnr_db") is not None:
                values.setdefault(op, []).append(figures["sqnr_db"])
    return {op: sum(v) / len(v) for op, v in values.items()}
