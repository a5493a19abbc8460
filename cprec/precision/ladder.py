"""Precision ladders: the rungs a schedule moves over, as fixed-point widths or as formats.

CPT's knob is the bit width; on the hardware people train on now it is the format (NVFP4 /
MXFP4 -> MXFP6 -> MXFP8 -> BF16). A ladder is an ordered list of rungs: fixed-point widths
(``[3, 4, 6, 8]``, quant.format=fixed) or operand formats (cprec.fake_quantize's names,
``[mxfp4, mxfp6_e2m3, mxfp8]``, quant.format=scaled). Every schedule profile computes a
position on 0..len-1 (schedules.py). A rung travels as its element width, so the ledger,
the layers' bits, the progress line and metrics.jsonl keep speaking bits; a width names
one rung because the widths rise strictly along a ladder.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cprec.errors import ConfigError
from cprec.precision.profiles import bit_levels

if TYPE_CHECKING:
    from cprec.config import TrainConfig
    from cprec.precision.schedules import PrecisionSchedule
    from cprec.quant.spec import OperandSpec

WIDTH_KINDS = ("fixed",)  # quant.format a ladder of widths runs with
FORMAT_KINDS = ("scaled",)  # quant.format a ladder of formats runs with
LADDER_FIELDS = ("ladder", "bw_ladder", "rung_names", "bw_rung_names", "switch_steps")
# why a learned precision does not climb a ladder (issue 25 item 4; docs "Ladders")
LEARNED_WHY = ("learns per-layer bits through the fixed-point grid's step size range / (2^b - 1); "
               "a ladder's rungs have no such step to differentiate (float grids, per-block scales)")


@dataclass(frozen=True)
class Ladder:
    """An ordered list of rungs: all widths (ints) or all format names."""

    rungs: tuple[int | str, ...]

    @property
    def formats(self) -> bool:
        return isinstance(self.rungs[0], str)

    @cached_property
    def widths(self) -> tuple[int, ...]:
        """Each rung's element width (a format's element bits, sign included; parsed once)."""
        return tuple(_width(r) for r in self.rungs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(str(r) for r in self.rungs)

    def spec(self, width: int) -> OperandSpec:
        """The operand format of the rung ``width`` stands for (a ladder of formats)."""
        from cprec.quant.spec import preset

        return preset(self.rungs[self.widths.index(width)])

    def spec_name(self, width: int) -> str:
        """The name of the rung ``width`` stands for."""
        return self.names[self.widths.index(width)]

    def cut(self, lo: int, hi: int) -> Ladder:
        """The rungs whose widths lie in lo..hi (a range test's bounds)."""
        return Ladder(tuple(r for r, w in zip(self.rungs, self.widths) if lo <= w <= hi))


class OnLadder:
    """A schedule's moves over ladder positions (schedules.PrecisionSchedule mixes it in):
    where each kind stands at a step, and the names of the rungs it stands on."""

    def position(self, step: int, rungs: int, base: int) -> int:
        """The ladder position (0..rungs-1) of ``step``: the profile's value on the positions,
        rounded as the bits ``base`` + position would be (``base``: the lowest rung's width),
        so a ladder of consecutive widths is exactly the min_bits..max_bits schedule."""
        if self.kind == "static":
            return rungs - 1
        if self.kind == "deficit":
            return 0 if step < self.deficit_steps else rungs - 1
        if self.kind == "stepped":
            return min(bisect_right(self.switch_steps, step), rungs - 1)
        return self._cyclic(step, base, base + rungs - 1) - base

    def _rung(self, step: int, widths: tuple[int, ...]) -> int:
        return widths[self.position(step, len(widths), widths[0])]

    def rung_name(self, width: int, backward: bool = False) -> str:
        """The name of the rung (a format, or a width) a width stands for on this ladder."""
        names, widths = ((self.bw_rung_names, self.bw_ladder) if backward and self.bw_ladder
                         else (self.rung_names, self.ladder))
        if backward and not self.bw_ladder or names is None or width not in widths:
            return str(width)
        return names[widths.index(width)]

    def spec(self) -> dict:
        """summary.json's ``schedule_spec``: every field, the ladder's only on a ladder."""
        spec = asdict(self)
        return spec if self.ladder is not None else {k: v for k, v in spec.items() if k not in LADDER_FIELDS}

    def rung_labels(self) -> dict[int, str]:
        """Each rung's width -> its name, forward and errors' ladders (plots name the rungs)."""
        labels = {w: self.rung_name(w) for w in self.ladder or ()}
        labels.update({w: self.rung_name(w, backward=True) for w in self.bw_ladder or ()})
        return labels

    def levels(self) -> int:
        """Levels a cycle passes through: its bit levels, or its ladders' rungs."""
        if self.ladder is None:
            return bit_levels(self.min_bits, self.max_bits, self.bw_min_bits, self.bw_bits)
        return max(len(self.ladder), len(self.bw_ladder or ()))


def _width(rung: int | str) -> int:
    if isinstance(rung, int):
        return rung
    from cprec.quant.spec import preset

    return preset(rung).element.bits


def parse_ladder(value: Any, key: str) -> Ladder | None:
    """A config list as a Ladder (None stays None); ConfigError, naming ``key``, on an empty
    ladder, a mix of widths and formats, an unknown format, a delayed-scaling format or widths
    that do not rise strictly."""
    if value is None:
        return None
    rungs = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not rungs:
        raise ConfigError(key, list(rungs), "an empty ladder has no rung to train at; give at "
                          "least one rung, e.g. [mxfp4, mxfp6_e2m3, mxfp8] or [4, 6, 8], or null")
    ints = [isinstance(r, int) and not isinstance(r, bool) for r in rungs]
    if any(ints) and not all(ints) or not all(ints) and not all(isinstance(r, str) for r in rungs):
        raise ConfigError(key, list(rungs), "a ladder is all fixed-point widths (quant=fixed) or "
                          "all formats (quant.format=scaled), never a mix: fixed-point and "
                          "float rungs share no grid")
    if all(ints):
        bad = [r for r in rungs if not 1 <= r <= 32]
        if bad:
            raise ConfigError(key, list(rungs), f"widths must be in 1..32 bits, not {bad[0]}")
    else:
        _check_formats(rungs, key)
    ladder = Ladder(rungs)
    widths = ladder.widths
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ConfigError(key, list(rungs), f"rungs must rise strictly in width (here {list(widths)} "
                          "bits): a ladder climbs, and a width names its rung in the ledger")
    return ladder


def _check_formats(rungs: tuple[str, ...], key: str) -> None:
    from cprec.quant.spec import FORMATS, preset

    for rung in rungs:
        if rung not in FORMATS:
            raise ConfigError(key, rung, f"unknown format; choose from {', '.join(FORMATS)}")
        if preset(rung).amax == "delayed":
            raise ConfigError(key, rung, "a delayed-scaling format keeps an amax history that "
                              "does not carry over from another rung; use its current-scaled "
                              "form (e.g. fp8_e4m3_tensor)")


def run_ladders(cfg: TrainConfig) -> tuple[Ladder | None, Ladder | None]:
    """(forward ladder, errors' ladder) of the run ``cfg`` describes (both None: no ladder)."""
    s = cfg.schedule
    return parse_ladder(s.ladder, "schedule.ladder"), parse_ladder(s.bw_ladder, "schedule.bw_ladder")


def check_fits_quant(ladder: Ladder | None, key: str, fmt: str) -> None:
    """Widths run with fixed point, formats with a scaled recipe (whose other settings stay)."""
    if ladder is None:
        return
    if ladder.formats and fmt not in FORMAT_KINDS:
        raise ConfigError(key, list(ladder.rungs), f"a ladder of formats needs a scaled recipe "
                          f"for the rest of each layer's step (quant.format={fmt}); add quant=mxfp8 "
                          "(its gradients stay MXFP8) or another scaled recipe")
    if not ladder.formats and fmt not in WIDTH_KINDS:
        raise ConfigError(key, list(ladder.rungs), f"a ladder of widths is fixed point; with "
                          f"quant.format={fmt} give formats (e.g. [mxint8] or [mxfp4, mxfp8]) or use "
                          "quant=fixed")


def check_ladders(cfg: TrainConfig) -> None:
    """The ladders of a run and of its range test, against the schedule and the quant format."""
    s, fmt = cfg.schedule, cfg.quant.format
    fw, bw = run_ladders(cfg)
    check_fits_quant(parse_ladder(cfg.prt.ladder, "prt.ladder"), "prt.ladder", fmt)
    if s.kind != "stepped":
        if s.steps_at is not None or s.before_lr_decay:
            key = "schedule.steps_at" if s.steps_at is not None else "schedule.before_lr_decay"
            raise ConfigError(key, s.steps_at if s.steps_at is not None else True,
                              f"only schedule=stepped climbs at fixed points, not schedule={s.name}")
    if s.kind == "fp32" or fw is None and bw is None:
        _check_stepped(cfg, None)
        return
    require_fw = "set schedule.ladder too (the forward operands' rungs)"
    if fw is None:
        raise ConfigError("schedule.bw_ladder", list(bw.rungs), require_fw)
    if s.kind in ("ldp", "cpt_ldp"):
        raise ConfigError("schedule.ladder", list(fw.rungs), f"schedule={s.name} {LEARNED_WHY}; "
                          "use a cyclic, stepped, static or deficit schedule over the ladder")
    for key, ladder in (("schedule.ladder", fw), ("schedule.bw_ladder", bw)):
        check_fits_quant(ladder, key, fmt)
        if ladder is not None and ladder.formats != fw.formats:
            raise ConfigError(key, list(ladder.rungs), "both ladders are widths or both formats")
        if s.kind == "static" and ladder is not None and len(ladder.rungs) > 1:
            raise ConfigError(key, list(ladder.rungs), "schedule=static trains at one rung: give "
                              f"a ladder of one (e.g. [{ladder.rungs[-1]}]) or a moving schedule")
    if s.kind == "cyclic" and s.bw_min_bits is not None:
        raise ConfigError("schedule.bw_min_bits", s.bw_min_bits, "over a ladder the errors cycle "
                          "along schedule.bw_ladder; set schedule.bw_min_bits=null")
    _check_stepped(cfg, fw)
    if s.kind == "stepped" and bw is not None and len(bw.rungs) not in (1, len(fw.rungs)):
        raise ConfigError("schedule.bw_ladder", list(bw.rungs), f"a stepped schedule climbs both "
                          f"ladders at the same steps: give 1 or {len(fw.rungs)} rungs")


def _check_stepped(cfg: TrainConfig, fw: Ladder | None) -> None:
    """schedule=stepped: one switch point per rung above the first, as fractions of the run
    or the lr schedule's milestones."""
    s, o = cfg.schedule, cfg.optim
    if s.kind != "stepped":
        return
    climbs = (len(fw.rungs) if fw is not None else 2) - 1
    if fw is None and s.min_bits >= s.max_bits:
        raise ConfigError("schedule.min_bits", s.min_bits, f"schedule=stepped climbs from min_bits "
                          f"to max_bits={s.max_bits}: min_bits must be below it (or give schedule.ladder)")
    if s.before_lr_decay:  # the lr milestones, not schedule.steps_at
        if o.lr_schedule != "multistep" or len(o.milestones) < climbs:
            raise ConfigError("schedule.before_lr_decay", True, f"climbing {climbs} rung(s) at the "
                              f"lr milestones needs optim.lr_schedule=multistep with at least {climbs} "
                              f"optim.milestones (here {o.lr_schedule}, {list(o.milestones)}); or "
                              "give schedule.steps_at")
        return
    at = s.steps_at
    example = ", ".join(f"{(i + 1) / (climbs + 1):.2g}" for i in range(climbs))
    if at is None or len(at) != climbs:
        raise ConfigError("schedule.steps_at", at, f"schedule=stepped needs {climbs} fraction(s) "
                          f"of the run, one per rung climbed (e.g. [{example}]), or "
                          "schedule.before_lr_decay=true")
    if not all(0 < f < 1 for f in at) or any(b <= a for a, b in zip(at, at[1:])):
        raise ConfigError("schedule.steps_at", list(at), "fractions of the run in (0, 1), rising "
                          f"strictly (e.g. [{example}])")


def switch_steps(fractions: list[float], total_steps: int) -> tuple[int, ...]:
    """The steps a stepped schedule climbs at: int(f * N), the step the lr schedule's
    milestone of the same fraction first decays at (numerics/optim.py)."""
    return tuple(int(f * total_steps) for f in fractions)


def steps_per_format(schedule: PrecisionSchedule, steps: int) -> dict[str, dict[str, int]]:
    """Training steps per rung name among the first ``steps`` (summary.json): the forward
    ladder's, and the errors' when they have a ladder of their own."""
    fw: Counter[str] = Counter()
    bw: Counter[str] = Counter()
    for t in range(steps):
        a, g = schedule.bits_at(t)
        fw[schedule.rung_name(a)] += 1
        bw[schedule.rung_name(g, backward=True)] += 1
    return {"forward": dict(fw), **({"backward": dict(bw)} if schedule.bw_ladder else {})}
