"""Precision schedules: pure ``bits_at(step)`` functions plus a small resumable scheduler.

Forward precision (weights and activations) follows the schedule; backward precision
(errors) stays fixed, as CPT found cycling it less stable. Cyclic schedules follow
PAPERS.md sections 1-2: period T = floor(N / C), z = (t mod T) / T, D = max - min, rint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cprec.config import ScheduleConfig
from cprec.errors import ConfigError

KINDS = ("fp32", "static", "cyclic", "deficit")
PROFILES = ("cosine", "linear", "exp", "rex")
SHAPES = ("growth", "decay", "triangular")


def cyclic_bits(step: int, total_steps: int, cycles: int, lo: int, hi: int,
                profile: str = "cosine", shape: str = "growth") -> int:
    """Forward bits at ``step`` of a cyclic schedule between ``lo`` and ``hi``.

    ``growth`` repeats a rising cycle (cosine growth is CPT's schedule), ``decay`` repeats
    a falling one, ``triangular`` alternates growth (even cycles) and decay (odd cycles),
    so precision rises and falls like a triangle wave starting from ``lo``.
    """
    period = max(total_steps // cycles, 1)
    cycle, z = divmod(step, period)
    z /= period
    rising = shape == "growth" or (shape == "triangular" and cycle % 2 == 0)
    from_min, term = _table_term(profile, z)
    value = lo + (hi - lo) * term if from_min == rising else hi - (hi - lo) * term
    # rint of the exact value: ties are common (linear 3..8 mid-cycle: 5.5; linear decay 1..16
    # at z = 5/6: 3.5; cosine 2..8 at z = 1/3: 3.5) and float evaluation lands them an ulp
    # either side, so snap to 9 decimals first; then round() rounds half to even, like rint
    return int(round(round(value, 9)))


def _table_term(profile: str, z: float) -> tuple[bool, float]:
    """(growth is written from b_min, term f) of PAPERS.md section 2's table: growth is
    b_min + D f (cosine, linear) or b_max - D f (exp, rex); decay is the mirror image."""
    if profile == "cosine":
        return True, 0.5 * (1 - math.cos(math.pi * z))
    if profile == "linear":
        return True, z
    if profile == "exp":
        return False, math.exp(-4 * z)
    if profile == "rex":
        y = 1 - z
        return False, y / (0.1 + 0.9 * y)
    raise ConfigError("schedule.profile", profile, f"choose one of {list(PROFILES)}")


@dataclass(frozen=True)
class PrecisionSchedule:
    """A schedule resolved for one run: bounds known, length known."""

    kind: str
    total_steps: int
    bits: int = 8  # static forward bits
    bw_bits: int = 8
    min_bits: int = 3
    max_bits: int = 8
    cycles: int = 32
    profile: str = "cosine"
    shape: str = "growth"
    deficit_steps: int = 0

    def bits_at(self, step: int) -> tuple[int, int]:
        """(forward bits, backward bits) for training step ``step`` (0-based)."""
        if self.kind == "fp32":
            return 32, 32
        if self.kind == "static":
            return self.bits, self.bw_bits
        if self.kind == "deficit":
            return (self.min_bits if step < self.deficit_steps else self.max_bits), self.bw_bits
        return cyclic_bits(step, self.total_steps, self.cycles, self.min_bits, self.max_bits,
                           self.profile, self.shape), self.bw_bits

    @property
    def fw_range(self) -> tuple[int, int]:
        """Lowest and highest forward bits the schedule can use."""
        if self.kind == "fp32":
            return 32, 32
        if self.kind == "static":
            return self.bits, self.bits
        return self.min_bits, self.max_bits

    @property
    def eval_bits(self) -> tuple[int, int]:
        """Precision at evaluation: the schedule's highest forward precision."""
        return self.fw_range[1], self.bits_at(0)[1]


def build_schedule(cfg: ScheduleConfig, total_steps: int, bounds: tuple[int, int] | None = None,
                   fixed_bits: int | tuple[int, int] | None = None) -> PrecisionSchedule:
    """Resolve a schedule config for a run of ``total_steps`` steps.

    ``bounds`` (min, max forward bits, e.g. from the precision range test) replace the
    configured ones; ``fixed_bits`` (a float format's width, or its (forward, backward)
    widths) replaces the static bits.
    """
    if cfg.kind not in KINDS:
        raise ConfigError("schedule.kind", cfg.kind, f"choose one of {list(KINDS)}")
    if cfg.profile not in PROFILES:
        raise ConfigError("schedule.profile", cfg.profile, f"choose one of {list(PROFILES)}")
    if cfg.shape not in SHAPES:
        raise ConfigError("schedule.shape", cfg.shape, f"choose one of {list(SHAPES)}")
    lo, hi = bounds if bounds is not None else (cfg.min_bits, cfg.max_bits)
    if cfg.kind == "cyclic" and cfg.cycles > total_steps:
        raise ConfigError("schedule.cycles", cfg.cycles,
                          f"must not exceed the run's {total_steps} training steps")
    if cfg.kind == "deficit" and cfg.deficit_steps > total_steps:
        raise ConfigError("schedule.deficit_steps", cfg.deficit_steps,
                          f"must not exceed the run's {total_steps} training steps")
    bits, bw = cfg.bits, cfg.bw_bits
    if fixed_bits is not None:
        if cfg.kind not in ("fp32", "static"):
            raise ConfigError("schedule", cfg.name, "a float quant format has a fixed width; "
                              "use schedule=static or schedule=fp32")
        bits, bw = fixed_bits if isinstance(fixed_bits, tuple) else (fixed_bits, fixed_bits)
    return PrecisionSchedule(cfg.kind, total_steps, bits, bw, lo, hi, cfg.cycles, cfg.profile,
                             cfg.shape, cfg.deficit_steps)


class PrecisionScheduler:
    """Stateful wrapper that walks a schedule step by step (resumable like an LR scheduler)."""

    def __init__(self, schedule: PrecisionSchedule) -> None:
        self.schedule, self.step = schedule, 0

    def current(self) -> tuple[int, int]:
        return self.schedule.bits_at(self.step)

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


def relative_cost_of(schedule: PrecisionSchedule, macs: dict[str, int],
                     quantized: set[str]) -> float:
    """Relative training cost of a whole schedule (equal batches), without training.

    The steps are counted per distinct (forward, backward) pair and priced by the same
    ledger a real run uses; layers outside ``quantized`` count 32/32.
    """
    from collections import Counter

    from cprec.cost import CostLedger

    ledger = CostLedger(macs)
    for (a, g), steps in Counter(map(schedule.bits_at, range(schedule.total_steps))).items():
        ledger.add({n: ((a, g) if n in quantized else (32, 32)) for n in macs}, steps)
    return ledger.relative_cost
