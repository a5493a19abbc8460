"""Precision schedules: pure ``bits_at(step)`` functions plus a small resumable scheduler.

Forward precision (weights and activations) follows the schedule; backward precision
(errors) stays at ``bw_bits`` unless ``bw_min_bits`` is set, then it cycles the same way
between ``bw_min_bits`` and ``bw_bits``. Cyclic schedules follow PAPERS.md sections 1-2
and the authors' code: z = (t mod T) / T, D = max - min, rint; the cycle length T, the
shape, the flip of exp/rex falls and the rounding of ties are options (README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cprec.errors import ConfigError
from cprec.precision.ladder import Ladder, OnLadder, parse_ladder, switch_steps
from cprec.precision.profiles import (  # noqa: F401 (re-exported: the schedules' vocabulary)
    CYCLE_LENGTHS,
    FLIPS,
    PROFILES,
    SHAPES,
    TIES,
    bit_levels,
    cycles_that_fit,
    cyclic_bits,
    period_of,
)

if TYPE_CHECKING:
    from cprec.config import ScheduleConfig

KINDS = ("fp32", "static", "cyclic", "deficit", "stepped", "ldp", "cpt_ldp")
LEARNED_KINDS = ("ldp", "cpt_ldp")  # per-layer precision learned in training (cprec/precision/ldp.py)
CYCLIC_KINDS = ("cyclic", "cpt_ldp")  # a CPT cycle drives the (base) forward bits
COST_PUSH = ("both", "down")
BOUNDS_MODES = ("auto", "prt", "config")  # where a cyclic run's min/max bits come from


# the schedules and shapes cprec had before it followed the Better Schedules code's names:
# the one line a user who asks for one gets
_REFERENCE_PROFILE = {"cosine": "cos", "linear": "linear", "exp": "exp", "rex": "demon"}
RENAMED_SHAPES = {
    "decay": "renamed: the shape that falls every cycle is schedule.shape=falling; the Better "
             "Schedules decay (falls, then rises, alternating) is schedule.shape=fall_rise",
    "triangular": "renamed: use schedule.shape=rise_fall (rises on even cycles, falls on odd ones)"}
RENAMED_SCHEDULES = {
    **{f"cpt_{p}_triangular": f"renamed to schedule=cpt_{p}_rise_fall (same bits)" for p in PROFILES},
    **{f"cpt_{p}_decay": f"renamed to schedule=cpt_{p}_falling (same bits); the Better Schedules "
                         f"{r}_decay (falls, then rises, alternating) is schedule={r}_decay"
       for p, r in _REFERENCE_PROFILE.items()}}


def check_schedule(cfg: ScheduleConfig) -> None:
    """Every schedule setting, before any work (cprec.validate calls this)."""
    from cprec.config import check_bits, require, require_choice

    require_choice("schedule.kind", cfg.kind, KINDS)
    require_choice("schedule.profile", cfg.profile, PROFILES)
    require(cfg.shape not in RENAMED_SHAPES, "schedule.shape", cfg.shape, RENAMED_SHAPES.get(cfg.shape, ""))
    require_choice("schedule.shape", cfg.shape, SHAPES)
    require_choice("schedule.flip", cfg.flip, FLIPS)
    require_choice("schedule.cycle_length", cfg.cycle_length, CYCLE_LENGTHS)
    require_choice("schedule.ties", cfg.ties, TIES)
    for key in ("bits", "bw_bits", "min_bits", "max_bits"):
        check_bits(f"schedule.{key}", getattr(cfg, key))
    require(cfg.min_bits <= cfg.max_bits, "schedule.min_bits", cfg.min_bits,
            f"must not exceed schedule.max_bits={cfg.max_bits}")
    if cfg.bw_min_bits is not None:
        check_bits("schedule.bw_min_bits", cfg.bw_min_bits)
        require(cfg.bw_min_bits <= cfg.bw_bits, "schedule.bw_min_bits", cfg.bw_min_bits,
                f"must not exceed schedule.bw_bits={cfg.bw_bits}")
        require(cfg.kind == "cyclic", "schedule.bw_min_bits", cfg.bw_min_bits, "only a cyclic schedule "
                f"cycles the backward bits, not schedule={cfg.name}; set schedule.bw_min_bits=null")
    require(cfg.cycles > 0, "schedule.cycles", cfg.cycles, "must be a positive number of cycles")
    require_choice("schedule.bounds", cfg.bounds, BOUNDS_MODES)
    require(cfg.deficit_steps >= 0, "schedule.deficit_steps", cfg.deficit_steps, "must be >= 0")
    check_learned(cfg)


def check_learned(cfg: ScheduleConfig) -> None:
    """The learned-precision settings (ldp, cpt_ldp): checked for every kind, since they
    have valid defaults; the bounds must leave something to learn."""
    from cprec.config import require, require_choice

    require(0 < cfg.target_cost <= 1, "schedule.target_cost", cfg.target_cost, "must be in "
            "(0, 1]: the training cost per step as a fraction of the same step at max_bits/bw_bits")
    require(cfg.max_offset >= 0, "schedule.max_offset", cfg.max_offset, "must be >= 0 bits")
    require(0 <= cfg.p_init <= 1, "schedule.p_init", cfg.p_init, "must be in [0, 1]")
    require(cfg.p_lr > 0, "schedule.p_lr", cfg.p_lr, "must be positive")
    require(0 <= cfg.p_momentum < 1, "schedule.p_momentum", cfg.p_momentum, "must be in [0, 1)")
    require(cfg.push_strength >= 0, "schedule.push_strength", cfg.push_strength, "must be >= 0")
    require(0 <= cfg.warmup < 1, "schedule.warmup", cfg.warmup, "must be a fraction in [0, 1)")
    require_choice("schedule.cost_push", cfg.cost_push, COST_PUSH)
    if cfg.kind in LEARNED_KINDS:
        require(cfg.min_bits < cfg.max_bits, "schedule.min_bits", cfg.min_bits,
                f"must be below schedule.max_bits={cfg.max_bits} for a learned precision "
                f"(schedule={cfg.name})")


def check_learned_format(cfg) -> None:
    """A learned precision needs fixed point (a float format's width is fixed)."""
    from cprec.config import require

    if cfg.schedule.kind not in LEARNED_KINDS:
        return
    require(cfg.quant.format == "fixed", "quant.format", cfg.quant.format,
            f"schedule={cfg.schedule.name} learns fixed-point bits per layer; use quant.format=fixed")


def check_fits_run(cfg: ScheduleConfig, total_steps: int, bounds: tuple[int, int] | None = None,
                   levels: int | None = None) -> None:
    """A schedule must fit the run's length; the message says how to make a short run fit.

    A cyclic schedule needs cycles of at least 2 steps: a cycle of one step never leaves its
    lowest bits, so the run would train at min_bits under a cyclic name (cycles shorter than
    their bit levels still cycle, skipping levels: ``PrecisionSchedule.cycle_warning``)."""
    if cfg.kind == "deficit" and cfg.deficit_steps > total_steps:
        raise ConfigError("schedule.deficit_steps", cfg.deficit_steps,
                          f"must not exceed the run's {total_steps} training steps")
    if levels is None:
        levels = bit_levels(*(bounds or (cfg.min_bits, cfg.max_bits)), cfg.bw_min_bits, cfg.bw_bits)
    one_step = levels > 1 and period_of(total_steps, cfg.cycles, cfg.cycle_length) < 2
    if cfg.kind not in CYCLIC_KINDS or not (cfg.cycles > total_steps or one_step):
        return
    fit = cycles_that_fit(total_steps, levels, cfg.cycle_length, min(cfg.cycles, total_steps))
    if cfg.cycles > total_steps:
        raise ConfigError("schedule.cycles", cfg.cycles,
                          f"{cfg.cycles} cycles need at least {cfg.cycles} training steps and the run "
                          f"has {total_steps}; set schedule.cycles=<n> with n <= {total_steps} "
                          f"(e.g. schedule.cycles={fit or 1}), or use schedule=static for a quick smoke test")
    more = (f"set schedule.cycles=<n> with n <= {fit} (a step per bit level: {levels})" if fit else
            f"{levels} bit levels need trainer.steps>={levels}")
    raise ConfigError("schedule.cycles", cfg.cycles,
                      f"{total_steps} steps in {cfg.cycles} cycles make cycles of one step, which "
                      f"never leave the lowest bits (a static run under a cyclic name); {more}, "
                      f"or use schedule=static")


@dataclass(frozen=True)
class PrecisionSchedule(OnLadder):
    """A schedule resolved for one run: bounds known, length known (summary.json saves it
    as ``schedule_spec``)."""

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
    flip: str = "horizontal"
    cycle_length: str = "floor"
    ties: str = "exact"
    bw_min_bits: int | None = None  # cyclic: errors cycle bw_min_bits..bw_bits; None = fixed
    # a ladder (ladder.py): the rungs' widths, forward and errors' (None: bits as above), their
    # names (formats, or the widths), and the steps a stepped schedule climbs at
    ladder: tuple[int, ...] | None = None
    bw_ladder: tuple[int, ...] | None = None
    rung_names: tuple[str, ...] | None = None
    bw_rung_names: tuple[str, ...] | None = None
    switch_steps: tuple[int, ...] = ()

    def _cyclic(self, step: int, lo: int, hi: int) -> int:
        return cyclic_bits(step, self.total_steps, self.cycles, lo, hi, self.profile, self.shape,
                           flip=self.flip, rule=self.cycle_length, ties=self.ties)

    def bits_at(self, step: int) -> tuple[int, int]:
        """(forward bits, backward bits) for training step ``step`` (0-based); on a ladder,
        the widths of the rungs the step trains at."""
        if self.kind == "fp32":
            return 32, 32
        if self.ladder is not None:
            bw = self.bw_bits if self.bw_ladder is None else self._rung(step, self.bw_ladder)
            return self._rung(step, self.ladder), bw
        if self.kind == "static":
            return self.bits, self.bw_bits
        if self.kind == "deficit":
            return (self.min_bits if step < self.deficit_steps else self.max_bits), self.bw_bits
        if self.kind == "ldp":  # learned per layer (cprec/precision/ldp.py); the top of its range here
            return self.max_bits, self.bw_bits
        bw = self.bw_bits if self.bw_min_bits is None else self._cyclic(step, self.bw_min_bits, self.bw_bits)
        return self._cyclic(step, self.min_bits, self.max_bits), bw

    @property
    def fw_range(self) -> tuple[int, int]:
        """Lowest and highest forward bits the schedule can use."""
        if self.kind == "fp32":
            return 32, 32
        if self.ladder is not None:
            return (self.ladder[-1] if self.kind == "static" else self.ladder[0]), self.ladder[-1]
        if self.kind == "static":
            return self.bits, self.bits
        return self.min_bits, self.max_bits

    @property
    def bw_range(self) -> tuple[int, int]:
        """Lowest and highest backward bits the schedule can use."""
        if self.kind == "fp32":
            return 32, 32
        if self.bw_ladder is not None:
            return (self.bw_ladder[-1] if self.kind == "static" else self.bw_ladder[0]), self.bw_ladder[-1]
        if self.kind == "cyclic" and self.bw_min_bits is not None:
            return self.bw_min_bits, self.bw_bits
        return self.bw_bits, self.bw_bits

    def used_ranges(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(lowest, highest) forward and backward bits the steps train at (learned: the range
        learned in); two cycles hold every (shape, position), other kinds are monotone."""
        if self.kind in LEARNED_KINDS or self.total_steps < 1:
            return self.fw_range, self.bw_range
        if self.kind == "cyclic":
            steps = range(min(self.total_steps, 2 * period_of(self.total_steps, self.cycles,
                                                               self.cycle_length)))
        else:
            steps = range(0, self.total_steps, max(self.total_steps - 1, 1))
        fw, bw = zip(*map(self.bits_at, steps))
        return (min(fw), max(fw)), (min(bw), max(bw))

    def cycle_warning(self) -> str | None:
        """A sentence when cyclic cycles are shorter than their bit levels (levels skipped)."""
        if self.kind != "cyclic":
            return None
        period = period_of(self.total_steps, self.cycles, self.cycle_length)
        levels = self.levels()
        if period >= levels:
            return None
        (lo, hi), _ = self.used_ranges()
        fit = cycles_that_fit(self.total_steps, levels, self.cycle_length, self.cycles)
        fix = f"; schedule.cycles={fit} gives every level a step" if fit else ""
        what = (f"bit levels {self.min_bits}..{self.max_bits}" if self.ladder is None else
                f"rungs {', '.join(self.rung_names or ())}")
        return (f"cycles of {period} steps are shorter than the {levels} {what}: the run trains "
                f"at {lo}..{hi} bits, skipping levels{fix}")

    def bit_ranges(self) -> dict[str, int]:
        """The bit fields of summary.json and schedule.json: the forward and backward bits the
        steps actually use (``used_ranges``); ``bits_bw`` is the top of the backward range."""
        (fw_lo, fw_hi), (bw_lo, bw_hi) = self.used_ranges()
        return {"bits_fw_min": fw_lo, "bits_fw_max": fw_hi, "bits_bw": bw_hi,
                "bits_bw_min": bw_lo, "bits_bw_max": bw_hi}

    @property
    def eval_bits(self) -> tuple[int, int]:
        """Precision at evaluation: the schedule's highest forward and backward precision."""
        return self.fw_range[1], self.bw_range[1]

    @classmethod
    def from_spec(cls, spec: dict) -> PrecisionSchedule:
        """A saved ``schedule_spec``, also one cprec wrote before the shapes were renamed
        (decay -> falling, triangular -> rise_fall; their exp/rex cycles fell upside down)."""
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        old = {"decay": "falling", "triangular": "rise_fall"}
        if spec.get("shape") in old and "flip" not in spec:
            spec.update(shape=old[spec["shape"]], flip="vertical")
        return cls(**spec)


def build_schedule(cfg: ScheduleConfig, total_steps: int, bounds: tuple[int, int] | None = None,
                   fixed_bits: int | tuple[int, int] | None = None,
                   lr_milestones: list[float] | None = None) -> PrecisionSchedule:
    """Resolve a schedule config for a run of ``total_steps`` steps.

    ``bounds`` (min, max forward bits, e.g. from the precision range test) replace the
    configured ones (on a ladder: keep the rungs within them); ``fixed_bits`` (a float
    format's width, or its (forward, backward) widths) replaces the static bits (on a ladder
    of formats: the recipe's gradients' width, when they have no ladder); ``lr_milestones``
    (optim.milestones) are where ``schedule.before_lr_decay`` climbs.
    """
    check_schedule(cfg)
    fw = parse_ladder(cfg.ladder, "schedule.ladder")
    if cfg.kind == "stepped" and fw is None:
        fw = Ladder((cfg.min_bits, cfg.max_bits) if bounds is None else bounds)
    if fw is not None and cfg.kind != "fp32":
        return _on_ladder(cfg, total_steps, fw, bounds, fixed_bits, lr_milestones)
    lo, hi = bounds if bounds is not None else (cfg.min_bits, cfg.max_bits)
    check_fits_run(cfg, total_steps, (lo, hi))
    bits, bw = cfg.bits, cfg.bw_bits
    if fixed_bits is not None:
        if cfg.kind not in ("fp32", "static"):
            raise ConfigError("schedule", cfg.name, "a float quant format has a fixed width; "
                              "use schedule=static or schedule=fp32")
        bits, bw = fixed_bits if isinstance(fixed_bits, tuple) else (fixed_bits, fixed_bits)
    return PrecisionSchedule(cfg.kind, total_steps, bits, bw, lo, hi, cfg.cycles, cfg.profile,
                             cfg.shape, cfg.deficit_steps, cfg.flip, cfg.cycle_length, cfg.ties,
                             cfg.bw_min_bits)


def _on_ladder(cfg: ScheduleConfig, total_steps: int, fw: Ladder, bounds: tuple[int, int] | None,
               fixed_bits: int | tuple[int, int] | None,
               lr_milestones: list[float] | None) -> PrecisionSchedule:
    """A schedule over ladder positions: the rungs within ``bounds`` (a range test's result)."""
    if bounds is not None:
        kept = fw.cut(*bounds)
        if not kept.rungs:
            raise ConfigError("schedule.ladder", list(fw.rungs), f"no rung lies within the bounds "
                              f"{bounds[0]}..{bounds[1]} bits; widen the ladder or set "
                              "schedule.bounds=config")
        fw = kept
    bw = parse_ladder(cfg.bw_ladder, "schedule.bw_ladder")
    bw_bits = cfg.bw_bits
    if isinstance(fixed_bits, tuple):  # a scaled recipe: its gradients' width
        bw_bits = fixed_bits[1]
    climbs = len(fw.rungs) - 1
    fractions = (lr_milestones or [])[:climbs] if cfg.before_lr_decay else (cfg.steps_at or [])
    if cfg.kind == "stepped" and len(fractions) != climbs:
        raise ConfigError("schedule.steps_at", cfg.steps_at, f"schedule=stepped climbs {climbs} rung(s): "
                          "give as many fractions of the run (or before_lr_decay with the lr milestones)")
    switch = switch_steps(list(fractions), total_steps) if cfg.kind == "stepped" else ()
    if any(b <= a for a, b in zip((0, *switch), (*switch, total_steps))):
        raise ConfigError("schedule.steps_at", list(fractions), f"a run of {total_steps} steps "
                          f"climbs at steps {list(switch)}: every rung needs steps of its own; "
                          "spread the fractions or train longer")
    levels = max(len(fw.rungs), len(bw.rungs) if bw else 0)
    check_fits_run(cfg, total_steps, levels=levels)
    widths = fw.widths
    return PrecisionSchedule(cfg.kind, total_steps, widths[-1], bw_bits, widths[0], widths[-1],
                             cfg.cycles, cfg.profile, cfg.shape, cfg.deficit_steps, cfg.flip,
                             cfg.cycle_length, cfg.ties, None, widths,
                             bw.widths if bw else None, fw.names, bw.names if bw else None, switch)


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
