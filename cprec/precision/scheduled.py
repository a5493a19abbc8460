"""Where a step's bits come from: the schedule, set on the model's layers once per step.

This is the plug point for anything that decides precision: a learned per-layer
precision replaces ``ScheduledPrecision`` by an object with the same methods.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from torch import nn

from cprec.precision.schedules import PrecisionSchedule
from cprec.quant import compute_layers, layer_bits, quant_layers, set_precision

log = logging.getLogger("cprec")

LayerBits = dict[str, tuple[int, int]]  # compute layer -> (forward, backward) bits


def last_layer_guideline(classes: int) -> int:
    """cprec's lower bound on the final classifier's bits for ``classes`` classes (a heuristic,
    derived in the README): ceil(log2(C + 1)).

    Early in training the softmax gives every class about 1/C, so the error of the logits
    (p - y) spans about [1/C - 1, 1/C]: width ~1. On a per-tensor grid of 2^b - 1 steps the
    wrong classes' errors (magnitude 1/C, what pushes their logits down) are at least one
    step only when 1/(2^b - 1) <= 1/C. The same bound is used for the forward bits.
    """
    return math.ceil(math.log2(classes + 1))


@dataclass(frozen=True)
class LastLayer:
    """How the final classifier's bits are set: ``bits`` (an int: fixed; "auto": floor at the
    guideline; None: the schedule's) for a task with ``classes`` classes."""

    name: str
    bits: int | str | None
    classes: int

    def adjust(self, fw: int, bw: int) -> tuple[int, int]:
        if isinstance(self.bits, int):
            return self.bits, self.bits
        if self.bits == "auto":
            floor = last_layer_guideline(self.classes)
            return max(fw, floor), max(bw, floor)
        return fw, bw


def last_layer_rule(model: nn.Module, bits: int | str | None, classes: int,
                    schedule: PrecisionSchedule) -> LastLayer | None:
    """The rule for the model's last layer when it is quantized (else None); warns when the
    run can quantize it below the guideline."""
    layers = list(quant_layers(model))
    compute = list(compute_layers(model))
    if not layers or not compute or layers[-1] != compute[-1]:
        return None  # the final classifier stays in full precision
    rule = LastLayer(layers[-1], bits, classes)
    lowest = min(rule.adjust(schedule.fw_range[0], schedule.bw_range[0]))
    floor = last_layer_guideline(classes)
    if lowest < floor:
        log.warning("the last layer (%s) is quantized down to %d bits, below cprec's guideline of "
                    "%d bits for %d classes (quant.last_bits=auto keeps it there)", rule.name,
                    lowest, floor, classes)
    return rule


class ScheduledPrecision:
    """Forward/backward bits of a pure schedule of the step, applied to every quantized layer.

    ``apply(step)`` sets the layers and returns each compute layer's bits (full-precision
    layers at 32/32) for the cost ledger; the step itself is the only state. Evaluation
    runs at the schedule's top forward bits (``eval_bits="max"``) or, as CPT's code does,
    at the bits of the step just trained (``"current"``).
    """

    def __init__(self, schedule: PrecisionSchedule, model: nn.Module,
                 last: LastLayer | None = None, eval_bits: str = "max") -> None:
        self.schedule, self.model, self.last = schedule, model, last
        self.eval_mode = eval_bits
        self._layer_bits: dict[tuple[int, int], LayerBits] = {}

    def bits_at(self, step: int) -> tuple[int, int]:
        """(forward, backward) bits of training step ``step`` (0-based)."""
        return self.schedule.bits_at(step)

    def _set(self, fw: int, bw: int) -> LayerBits:
        per_layer = None if self.last is None else {self.last.name: self.last.adjust(fw, bw)}
        set_precision(self.model, fw, bw, per_layer)
        if (fw, bw) not in self._layer_bits:
            self._layer_bits[(fw, bw)] = layer_bits(self.model)
        return self._layer_bits[(fw, bw)]

    def apply(self, step: int) -> LayerBits:
        """Set the layers to step ``step``'s bits; return every compute layer's bits."""
        return self._set(*self.bits_at(step))

    def eval_bits_at(self, step: int) -> tuple[int, int]:
        """(forward, backward) bits of an evaluation after ``step`` training steps."""
        if self.eval_mode == "current":
            return self.bits_at(max(step - 1, 0))
        return self.schedule.eval_bits

    def apply_eval(self, step: int) -> LayerBits:
        """Set the layers to the precision an evaluation after ``step`` steps runs at."""
        return self._set(*self.eval_bits_at(step))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
