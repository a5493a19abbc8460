"""Where a step's bits come from: the schedule, set on the model's layers once per step.

This is the plug point for anything that decides precision: a learned per-layer
precision replaces ``ScheduledPrecision`` by an object with the same methods.
"""

from __future__ import annotations

from torch import nn

from cprec.quant import layer_bits, set_precision
from cprec.schedules import PrecisionSchedule

LayerBits = dict[str, tuple[int, int]]  # compute layer -> (forward, backward) bits


class ScheduledPrecision:
    """Forward/backward bits of a pure schedule of the step, applied to every quantized layer.

    ``apply(step)`` sets the layers and returns each compute layer's bits (full-precision
    layers at 32/32) for the cost ledger; the step itself is the only state.
    """

    def __init__(self, schedule: PrecisionSchedule, model: nn.Module) -> None:
        self.schedule, self.model = schedule, model
        self._layer_bits: dict[tuple[int, int], LayerBits] = {}

    def bits_at(self, step: int) -> tuple[int, int]:
        """(forward, backward) bits of training step ``step`` (0-based)."""
        return self.schedule.bits_at(step)

    def _set(self, fw: int, bw: int) -> LayerBits:
        set_precision(self.model, fw, bw)
        if (fw, bw) not in self._layer_bits:
            self._layer_bits[(fw, bw)] = layer_bits(self.model)
        return self._layer_bits[(fw, bw)]

    def apply(self, step: int) -> LayerBits:
        """Set the layers to step ``step``'s bits; return every compute layer's bits."""
        return self._set(*self.bits_at(step))

    def apply_eval(self) -> LayerBits:
        """Set the layers to the precision evaluation runs at."""
        return self._set(*self.schedule.eval_bits)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
