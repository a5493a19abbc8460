"""The Better Schedules reference names against the authors' code (PAPERS.md 2, issue #11).

``reference_bits`` below transcribes wolfecameron/BetterPrecisionSchedules,
cpt_cifar/quant_scheds.py (the calc_* functions) and train.py (cyclic_adjust_precision and
the cycle length), float64 arithmetic and np.rint included, independently of
cprec.precision.schedules: forward bits between the --cyclic_num_bits_schedule bounds, backward bits
between the --cyclic_num_grad_bits_schedule bounds, --flip-vertically for exp/demon decay.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cprec.config import ScheduleConfig
from cprec.errors import ConfigError
from cprec.paths import config_dir
from cprec.precision.schedules import (
    RENAMED_SCHEDULES,
    PrecisionSchedule,
    build_schedule,
    period_of,
    relative_cost_of,
)
from tests.helpers import run_cli

REFERENCE = [f"{p}_{s}" for p in ("cos", "linear", "exp", "demon") for s in ("growth", "decay")]


def schedule_options() -> set[str]:
    return {p.stem for p in (Path(config_dir()) / "schedule").glob("*.yaml")}


def calc_growth(profile: str, period: int, it: int, lo: int, hi: int, discrete: bool = True) -> float:
    """calc_<profile>_growth of quant_scheds.py."""
    if profile == "cos":
        z = float(it % period) / period
        val = lo + 0.5 * float(hi - lo) * (1.0 - np.cos(np.pi * z))
    elif profile == "linear":
        mod_iter = float(it % period)
        val = lo + (float(hi - lo) * (float(mod_iter) / period))
    elif profile == "exp":
        z = float(it % period) / period
        val = hi - float(hi - lo) * np.exp(-4 * z)
    else:  # demon
        mod_iter = float(it % period)
        z = float(period - mod_iter) / period
        val = hi - float(hi - lo) * (z / (1 - 0.9 + 0.9 * z))
    return np.rint(val) if discrete else val


def calc_decay(profile: str, period: int, it: int, lo: int, hi: int, flip_vertically: bool,
               discrete: bool = True) -> float:
    """calc_<profile>_decay of quant_scheds.py (only exp and demon take flip_vertically)."""
    if profile == "cos":
        z = float(it % period) / period
        val = hi - 0.5 * float(hi - lo) * (1.0 - np.cos(np.pi * z))
    elif profile == "linear":
        mod_iter = float(it % period)
        val = hi - (float(hi - lo) * (float(mod_iter) / period))
    elif profile == "exp":
        z = float(it % period) / period
        if flip_vertically:
            val = lo + float(hi - lo) * np.exp(-4 * z)
        else:
            z = 1.0 - z
            val = hi - float(hi - lo) * np.exp(-4 * z)
    else:  # demon
        mod_iter = float(it % period)
        z = float(period - mod_iter) / period
        if flip_vertically:
            val = lo + float(hi - lo) * (z / (1 - 0.9 + 0.9 * z))
        else:
            z = 1.0 - z
            val = hi - float(hi - lo) * (z / (1 - 0.9 + 0.9 * z))
    return np.rint(val) if discrete else val


def reference_bits(name: str, it: int, iters: int, num_cyclic_period: int, bits: tuple[int, int],
                   grad_bits: tuple[int, int], flip_vertically: bool) -> tuple[int, int]:
    """train.py: cyclic_period = int(iters / num_cyclic_period) + 1; an X_decay schedule uses
    calc_X_growth on odd periods (int(it / cyclic_period) % 2 == 1), calc_X_decay on even ones."""
    period = int(iters / num_cyclic_period) + 1
    profile, shape = name.split("_")
    if shape == "growth" or int(it / period) % 2 == 1:
        return tuple(int(calc_growth(profile, period, it, *b)) for b in (bits, grad_bits))
    return tuple(int(calc_decay(profile, period, it, *b, flip_vertically)) for b in (bits, grad_bits))


# (N steps, C cycles, forward lo..hi, backward lo..hi): N divisible by C or not, N = C,
# N < 2C, one step; T = 30 puts cosine 2..8 at z = 1/3 and T = 22 linear 1..12 and 3..14 at
# z = 15/22: exact ties that float64 lands an ulp off .5
CASES = [(89, 3, (2, 8), (6, 8)), (100, 8, (3, 8), (4, 8)), (8, 8, (3, 8), (6, 8)),
         (11, 8, (2, 8), (5, 8)), (1, 1, (3, 8), (8, 8)), (179, 3, (1, 16), (2, 16)),
         (64, 3, (1, 12), (3, 14)),
         (2000, 8, (3, 8), (6, 8))]


@pytest.fixture(scope="module")
def reference_configs() -> dict[str, ScheduleConfig]:
    """Each reference name's ScheduleConfig as `schedule=<name>` composes it."""
    from hydra import compose, initialize_config_dir

    from cprec.config import register_schemas
    from cprec.validate import to_train_config

    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return {n: to_train_config(compose("train", [f"schedule={n}"])).schedule for n in REFERENCE}


@pytest.mark.parametrize("flip", ["horizontal", "vertical"])
@pytest.mark.parametrize("name", REFERENCE)
def test_reference_names_match_the_authors_code(reference_configs, name: str, flip: str) -> None:
    """schedule=<name>: forward and backward bits equal the transcribed reference at every
    step, for both flips and every (N, C) of CASES, float64 ties included."""
    for n, c, (lo, hi), (bw_lo, bw_hi) in CASES:
        cfg = replace(reference_configs[name], cycles=c, min_bits=lo, max_bits=hi, bw_min_bits=bw_lo,
                      bw_bits=bw_hi, flip=flip, bounds="config")
        sched = build_schedule(cfg, n)
        got = [sched.bits_at(t) for t in range(n)]
        want = [reference_bits(name, t, n, c, (lo, hi), (bw_lo, bw_hi), flip == "vertical")
                for t in range(n)]
        assert got == want, (n, c)


@pytest.mark.parametrize("calc, profile, n, c, lo, hi", [
    (calc_growth, "cos", 89, 3, 2, 8), (lambda *a, **k: calc_decay(*a, False, **k), "linear", 64, 3, 1, 12)])
def test_the_cases_hold_float_ties(calc, profile: str, n: int, c: int, lo: int, hi: int) -> None:
    """CASES reach steps where the authors' np.rint of the float64 value differs from
    rounding the exact value (cosine growth 2 + 3 (1 - cos(pi/3)) = 3.5 comes out 3.4999...;
    linear decay 12 - 11 * 15/22 = 4.5 comes out 4.5000...01), so a cprec that rounded the
    reference names like its cpt_* ones would fail the test above."""
    period = int(n / c) + 1
    values = [calc(profile, period, t, lo, hi, discrete=False) for t in range(n)]
    assert any(np.rint(v) != np.rint(round(float(v), 9)) for v in values)


def test_cycle_length_rule() -> None:
    """floor: T = int(N / C) (CPT's code); floor_plus_one: T = int(N / C) + 1 (Better
    Schedules'); a growth cycle restarts at min_bits exactly at step T."""
    for n, c in [(64000, 8), (64000, 32), (100, 8), (8, 8), (11, 8), (1, 1)]:
        assert period_of(n, c, "floor") == int(n / c)
        assert period_of(n, c, "floor_plus_one") == int(n / c) + 1
    for rule, period in (("floor", 12), ("floor_plus_one", 13)):
        sched = PrecisionSchedule("cyclic", 100, cycles=8, cycle_length=rule)
        assert [sched.bits_at(t)[0] for t in (period - 1, period, 2 * period)] == [8, 3, 3], rule


def test_each_family_defaults_to_its_papers_rules(compose) -> None:
    """Reference names: T = int(N / C) + 1 and float64 ties, flip horizontal (train.py's
    default); cpt_* names: CPT's T = int(N / C) and exact ties."""
    for name in REFERENCE + sorted(n for n in schedule_options() if n.startswith("cpt_")):
        s = compose([f"schedule={name}"]).schedule
        want = ("floor_plus_one", "float") if name in REFERENCE else ("floor", "exact")
        assert (s.cycle_length, s.ties) == want, name
        assert s.flip == "horizontal" or (name.startswith(("cpt_exp_", "cpt_rex_")) and s.flip == "vertical")


def test_flip_only_turns_exp_and_rex() -> None:
    """Cosine and linear fall the same either way; exp and rex fall mirrored in time
    (horizontal) or upside down (vertical), which differ."""
    def bits(profile: str, flip: str) -> list[int]:
        sched = PrecisionSchedule("cyclic", 64, cycles=2, profile=profile, shape="falling", flip=flip)
        return [sched.bits_at(t)[0] for t in range(64)]

    for profile in ("cosine", "linear"):
        assert bits(profile, "horizontal") == bits(profile, "vertical")
    for profile in ("exp", "rex"):
        assert bits(profile, "horizontal") != bits(profile, "vertical")


def test_backward_bits_cycle_everywhere_they_are_read() -> None:
    """bw_min_bits: errors cycle like the forward bits; ranges, cost, the progress bar's
    window and the report's curve all see the varying value; only cyclic schedules allow it."""
    from cprec.cost import CostLedger
    from cprec.engine.progress import BitsSeen
    from cprec.report.plots import schedule_curve

    sched = build_schedule(ScheduleConfig(kind="cyclic", cycles=2, bw_min_bits=6, bw_bits=8), 40)
    bits = [sched.bits_at(t) for t in range(40)]
    assert {b[1] for b in bits} == {6, 7, 8} and bits[0] == (3, 6) and bits[19] == (8, 8)
    assert sched.bw_range == (6, 8)
    assert sched.bit_ranges() == {"bits_fw_min": 3, "bits_fw_max": 8, "bits_bw": 8,
                                  "bits_bw_min": 6, "bits_bw_max": 8}
    macs, ledger = {"conv": 1000}, CostLedger({"conv": 1000})
    for fw, bw in bits:
        ledger.add({"conv": (fw, bw)}, 1)
    assert relative_cost_of(sched, macs, set(macs)) == pytest.approx(ledger.relative_cost, rel=1e-12)
    seen = BitsSeen()
    for b in bits:
        seen.add(*b)
    assert seen.take() == "3..8/6..8"
    from dataclasses import asdict

    _, fw, bw = schedule_curve({"schedule_spec": asdict(sched)})
    assert list(zip(fw, bw)) == bits
    for kind in ("static", "deficit", "fp32"):
        with pytest.raises(ConfigError, match="only a cyclic schedule"):
            build_schedule(ScheduleConfig(kind=kind, bw_min_bits=6), 40)
    with pytest.raises(ConfigError, match="must not exceed schedule.bw_bits=8"):
        build_schedule(ScheduleConfig(kind="cyclic", bw_min_bits=9), 40)


def test_old_summaries_plot_their_own_schedule() -> None:
    """A schedule_spec saved before the renames (shape decay/triangular, no flip) rebuilds
    the bits it ran: falling / rise_fall with exp/rex falling upside down."""
    for old, new in (("decay", "falling"), ("triangular", "rise_fall")):
        spec = {"kind": "cyclic", "total_steps": 90, "min_bits": 2, "max_bits": 8, "cycles": 3,
                "profile": "exp", "shape": old, "bits": 8, "bw_bits": 8, "deficit_steps": 0}
        legacy = PrecisionSchedule.from_spec(spec)
        assert legacy == PrecisionSchedule(**{**spec, "shape": new, "flip": "vertical"})
        t = 30 if old == "triangular" else 0  # a falling cycle: starts at max, lo + D e^(-4z)
        assert legacy.bits_at(t)[0] == 8 and legacy.bits_at(t + 15)[0] == 2 + round(6 * np.exp(-2))


def test_removed_names_are_gone_and_their_hints_point_at_real_options() -> None:
    """No cpt_*_decay / cpt_*_triangular file is left, each hint names an existing option, and
    an old shape value gets its new name in the error."""
    names = schedule_options()
    assert not names & set(RENAMED_SCHEDULES)
    for old, hint in RENAMED_SCHEDULES.items():
        targets = [w.removeprefix("schedule=").rstrip(";") for w in hint.split() if w.startswith("schedule=")]
        assert targets and set(targets) <= names, old
    with pytest.raises(ConfigError, match="schedule.shape=rise_fall"):
        build_schedule(ScheduleConfig(kind="cyclic", shape="triangular"), 40)


@pytest.mark.parametrize("args, needle", [
    (["schedule", "schedule=exp_decay", "schedule.flip=diagonal"],
     "schedule.flip='diagonal' is invalid: choose one of ['horizontal', 'vertical']"),
    (["train", "schedule=cpt_exp_triangular"],
     "schedule=cpt_exp_triangular is invalid: renamed to schedule=cpt_exp_rise_fall (same bits)"),
    (["train", "-m", "schedule=static,cpt_cosine_decay"],
     "schedule=cpt_cosine_decay is invalid: renamed to schedule=cpt_cosine_falling (same bits); "
     "the Better Schedules cos_decay (falls, then rises, alternating) is schedule=cos_decay"),
    (["schedule", "schedule.bw_min_bits=9"], "schedule.bw_min_bits=9 is invalid: must not exceed"),
])
def test_schedule_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    """A bad flip, a removed schedule name (also inside a sweep) or a backward range upside
    down: one line, exit 2, no traceback, nothing written."""
    out = run_cli(args, tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]


def test_schedule_preview_writes_every_steps_bits(compose, tmp_path: Path) -> None:
    """`cprec schedule` writes schedule.csv (step,bits_fw,bits_bw; one row per step from 0)
    whose rows are bits_at of every step, and schedule.json names it."""
    from cprec.engine.build import plan_run

    overrides = ["schedule=demon_decay", "schedule.bw_min_bits=5", "schedule.cycles=3",
                 "trainer.steps=301", "model=mlp"]
    out = run_cli(["schedule", *overrides], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    preview = next((tmp_path / "outputs" / "schedule").rglob("schedule.json"))
    result = json.loads(preview.read_text())
    assert (result["csv"], result["bits_bw_min"], result["bits_bw_max"]) == ("schedule.csv", 5, 8)
    with open(preview.parent / result["csv"], newline="") as f:
        rows = list(csv.reader(f))
    schedule = plan_run(compose(overrides)).schedule
    assert rows[0] == ["step", "bits_fw", "bits_bw"]
    assert [tuple(map(int, r)) for r in rows[1:]] == [(t, *schedule.bits_at(t)) for t in range(301)]
    assert "backward 5..8 bits" in out.stdout
    assert not list(preview.parent.glob(".*.tmp"))
