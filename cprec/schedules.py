"""Precision schedules: pure ``bits_at(step)`` functions plus a small resumable scheduler.

Forward precision (weights and activations) follows the schedule; backward precision
(errors) stays fixed, as CPT found cycling it less stable. Cyclic schedules follow
PAPERS.md sections 1-2: period T = floor(N / C), z = (t mod T) / T, D = max - min, rint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cprec.errors import ConfigError

if TYPE_CHECKING:
    from cprec.config import ScheduleConfig

KINDS = ("fp32", "static", "cyclic", "deficit")
SHAPES = ("growth", "decay", "triangular")
BOUNDS_MODES = ("auto", "prt", "config")  # where a cyclic run's min/max bits come from


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
    from_min, term = PROFILES[profile](z)
    value = lo + (hi - lo) * term if from_min == rising else hi - (hi - lo) * term
    # rint of the exact value: ties are common (linear 3..8 mid-cycle: 5.5; linear decay 1..16
    # at z = 5/6: 3.5; cosine 2..8 at z = 1/3: 3.5) and float evaluation lands them an ulp
    # either side, so snap to 9 decimals first; then round() rounds half to even, like rint
    return int(round(round(value, 9)))


def _cosine(z: float) -> tuple[bool, float]:
    return True, 0.5 * (1 - math.cos(math.pi * z))


def _linear(z: float) -> tuple[bool, float]:
    return True, z


def _exp(z: float) -> tuple[bool, float]:
    return False, math.exp(-4 * z)


def _rex(z: float) -> tuple[bool, float]:
    y = 1 - z
    return False, y / (0.1 + 0.9 * y)


# PAPERS.md section 2's table, one entry per profile: term(z) -> (growth is written from
# b_min, f): growth is b_min + D f (cosine, linear) or b_max - D f (exp, rex); decay is its
# mirror image. Adding a profile is one function and one entry here.
PROFILES: dict[str, Callable[[float], tuple[bool, float]]] = {
    "cosine": _cosine, "linear": _linear, "exp": _exp, "rex": _rex}


def check_schedule(cfg: ScheduleConfig) -> None:
    """Every schedule setting, before any work (config.validate calls this)."""
    from cprec.config import check_bits, require, require_choice

    require_choice("schedule.kind", cfg.kind, KINDS)
    require_choice("schedule.profile", cfg.profile, PROFILES)
    require_choice("schedule.shape", cfg.shape, SHAPES)
    for key in ("bits", "bw_bits", "min_bits", "max_bits"):
        check_bits(f"schedule.{key}", getattr(cfg, key))
    require(cfg.min_bits <= cfg.max_bits, "schedule.min_bits", cfg.min_bits,
            f"must not exceed schedule.max_bits={cfg.max_bits}")
    require(cfg.cycles > 0, "schedule.cycles", cfg.cycles, "must be a positive number of cycles")
    require_choice("schedule.bounds", cfg.bounds, BOUNDS_MODES)
    require(cfg.deficit_steps >= 0, "schedule.deficit_steps", cfg.deficit_steps, "must be >= 0")


def check_fits_run(cfg: ScheduleConfig, total_steps: int) -> None:
    """A schedule must fit the run's length; the message says how to make a short run fit."""
    if cfg.kind == "cyclic" and cfg.cycles > total_steps:
        raise ConfigError("schedule.cycles", cfg.cycles,
                          f"{cfg.cycles} cycles need at least {cfg.cycles} training steps and the run "
                          f"has {total_steps}; set schedule.cycles=<n> with n <= {total_steps} "
                          f"(e.g. schedule.cycles={max(1, total_steps // 10)}), or use schedule=static "
                          f"for a quick smoke test")
    if cfg.kind == "deficit" and cfg.deficit_steps > total_steps:
        raise ConfigError("schedule.deficit_steps", cfg.deficit_steps,
                          f"must not exceed the run's {total_steps} training steps")


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
    check_schedule(cfg)
    check_fits_run(cfg, total_steps)
    lo, hi = bounds if bounds is not None else (cfg.min_bits, cfg.max_bits)
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
