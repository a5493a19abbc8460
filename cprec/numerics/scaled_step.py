"""The scaled formats' part of the training step: delayed-scaling histories roll after every
step, telemetry is read at every evaluation, and both go into checkpoints.

The layers hold their state (cprec/quant/pergemm.py ``LayerGemms``); this plugin is the one
place the loop reaches it, so a resumed run casts with exactly the scales, Hadamard signs
and telemetry sums an uninterrupted one would (the stochastic-rounding keys come from the
model's ``QuantRNG``, checkpointed as ``qrng``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cprec.engine.step import StepPlugin
from cprec.quant import quant_layers
from cprec.quant.telemetry import mean_over_layers


class ScaledFormats(StepPlugin):
    """Per-step amax updates, ``quant_telemetry`` in metrics.jsonl and summary.json."""

    name = "scaled_formats"

    def __init__(self, model: nn.Module) -> None:
        self.layers = {n: m for n, m in quant_layers(model).items() if hasattr(m, "gemms")}
        self.device = next(model.parameters()).device
        self.telemetry = any(m.gemms.telemetry is not None for m in self.layers.values())

    def after_update(self, updated: bool) -> None:
        """Transformer Engine rolls the histories after every step (a skipped one too)."""
        for layer in self.layers.values():
            layer.gemms.update_amax()

    def metrics(self) -> dict[str, Any]:
        if not self.telemetry:
            return {}
        return {"quant_telemetry": {n: m.gemms.telemetry.fold() for n, m in self.layers.items()}}

    def summary(self) -> dict[str, Any]:
        if not self.telemetry:
            return {}
        means = {n: m.gemms.telemetry.means() for n, m in self.layers.items()}
        return {"quant_telemetry": means, "quant_sqnr_db": mean_over_layers(means)}

    def state_dict(self) -> dict:
        return {n: m.gemms.state_dict() for n, m in self.layers.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, layer_state in state.items():
            self.layers[name].gemms.load_state_dict(layer_state, self.device)


def scaled_formats(parts: Any) -> ScaledFormats | None:
    """The plugin for ``quant.format=scaled`` runs (None otherwise)."""
    return ScaledFormats(parts.model) if parts.cfg.quant.format == "scaled" else None
