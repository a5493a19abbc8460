"""Precision schedules against the formulas of PAPERS.md section 2 (issue #4 item 7): cprec's
CPT-family schedules (cycle_length=floor, ties=exact). The Better Schedules reference names
are checked against a transcription of the authors' code in test_better_schedules.py.

Period T = floor(N / C), z = (t mod T) / T, D = b_max - b_min, results rounded with rint:

    cosine  growth b_min + D/2 (1 - cos(pi z))     decay b_max - D/2 (1 - cos(pi z))
    linear  growth b_min + D z                     decay b_max - D z
    exp     growth b_max - D e^(-4z)               decay b_min + D e^(-4z)
    rex     growth b_max - D y / (0.1 + 0.9 y)     decay b_min + D y / (0.1 + 0.9 y), y = 1 - z

"falling" repeats the decay column (flip=vertical: the rising curve upside down), "rise_fall"
alternates growth (cycle 0, 2, ...) and decay (cycle 1, 3, ...).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cprec.config import ScheduleConfig
from cprec.cost import CostLedger
from cprec.errors import ConfigError
from cprec.precision.schedules import (
    PrecisionSchedule,
    PrecisionScheduler,
    build_schedule,
    cyclic_bits,
    relative_cost_of,
)

PROFILES = ["cosine", "linear", "exp", "rex"]
SHAPES = ["growth", "falling", "rise_fall"]


def paper_bits(t: int, n: int, c: int, lo: int, hi: int, profile: str, shape: str) -> int:
    """The table of PAPERS.md section 2, written out independently of cprec.precision.schedules."""
    period = n // c
    z = (t % period) / period
    d = hi - lo
    rising = shape == "growth" or (shape == "rise_fall" and (t // period) % 2 == 0)
    y = 1 - z
    table = {
        "cosine": (lo + d / 2 * (1 - math.cos(math.pi * z)), hi - d / 2 * (1 - math.cos(math.pi * z))),
        "linear": (lo + d * z, hi - d * z),
        "exp": (hi - d * math.exp(-4 * z), lo + d * math.exp(-4 * z)),
        "rex": (hi - d * y / (0.1 + 0.9 * y), lo + d * y / (0.1 + 0.9 * y)),
    }
    growth, decay = table[profile]
    value = growth if rising else decay
    # rint of the exact value: exact ties (linear mid-cycle, rex and cosine at rational points)
    # come out of float64 an ulp either side of .5, so snap before rounding half to even
    return int(np.rint(round(value, 9)))


def checkpoints(n: int, c: int) -> list[int]:
    """Cycle boundaries and mid-cycle points: 0, T/2, T-1, T, T+1, 2T-1, 2T, ..., N-1."""
    period = n // c
    steps = {0, 1, period // 2, n - 1, n // 2}
    for k in range(1, c + 1):
        steps |= {k * period - 1, k * period, k * period + 1, k * period + period // 2}
    return sorted(s for s in steps if 0 <= s < n)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n,c,lo,hi", [(100, 4, 3, 8), (103, 4, 2, 8), (64, 8, 4, 6), (90, 3, 1, 16)])
def test_cyclic_bits_match_the_paper(profile: str, shape: str, n: int, c: int, lo: int,
                                     hi: int) -> None:
    """bits_at(t) equals rint(formula) at cycle boundaries, mid-cycle, and everywhere else."""
    sched = PrecisionSchedule("cyclic", n, bw_bits=6, min_bits=lo, max_bits=hi, cycles=c,
                              profile=profile, shape=shape, flip="vertical")
    for t in checkpoints(n, c):
        assert cyclic_bits(t, n, c, lo, hi, profile, shape, flip="vertical") == \
            paper_bits(t, n, c, lo, hi, profile, shape), t
    for t in range(n):
        fw, bw = sched.bits_at(t)
        assert fw == paper_bits(t, n, c, lo, hi, profile, shape), t
        assert lo <= fw <= hi and bw == 6  # backward precision stays fixed


@pytest.mark.parametrize("profile", PROFILES)
def test_cycle_start_and_end_values(profile: str) -> None:
    """Growth starts each cycle at b_min, falling at b_max; both are back there at t = T."""
    n, c, lo, hi = 80, 4, 3, 8
    period = n // c
    for t in (0, period, 2 * period):
        assert cyclic_bits(t, n, c, lo, hi, profile, "growth") == lo
        assert cyclic_bits(t, n, c, lo, hi, profile, "falling") == hi
    # growth never falls and falling never rises within a cycle, whichever way it is flipped
    up = [cyclic_bits(t, n, c, lo, hi, profile, "growth") for t in range(period)]
    for flip in ("horizontal", "vertical"):
        down = [cyclic_bits(t, n, c, lo, hi, profile, "falling", flip=flip) for t in range(period)]
        assert up == sorted(up) and down == sorted(down, reverse=True)


def test_cpt_cosine_hand_values() -> None:
    """CPT 3..8, T = 8: z = k/8 -> 3 + 2.5 (1 - cos(pi k / 8)) = 3, 3.19, 3.73, 4.54, 5.5, ..."""
    got = [cyclic_bits(t, 64, 8, 3, 8) for t in range(8)]
    # 3.00 3.19 3.73 4.54 5.50 6.46 7.27 7.81 -> rint (5.5 is a tie: half to even = 6)
    assert got == [3, 3, 4, 5, 6, 6, 7, 8]
    assert [cyclic_bits(t, 64, 8, 3, 8) for t in range(8, 16)] == got  # repeats every cycle


@pytest.mark.parametrize("t,n,c,lo,hi,profile,shape,exact,expected", [
    (2, 4, 1, 3, 8, "linear", "growth", "3 + 5 * 2/4 = 5.5", 6),
    (25, 90, 3, 1, 16, "linear", "falling", "16 - 15 * 25/30 = 3.5", 4),
    (27, 30, 1, 1, 16, "linear", "falling", "16 - 15 * 27/30 = 2.5", 2),
    (20, 90, 3, 1, 16, "rex", "growth", "16 - 15 * (1/3) / (0.1 + 0.3) = 3.5", 4),
    (10, 90, 3, 2, 8, "cosine", "growth", "2 + 3 (1 - cos(pi/3)) = 3.5", 4),
    (20, 90, 3, 2, 8, "cosine", "growth", "2 + 3 (1 - cos(2 pi/3)) = 6.5", 6),
])
def test_exact_ties_round_half_to_even(t: int, n: int, c: int, lo: int, hi: int, profile: str,
                                       shape: str, exact: str, expected: int) -> None:
    """Where the formula's exact value is a tie, rint rounds half to even, whatever float
    evaluation order would say (the closed forms are given in the ids)."""
    assert cyclic_bits(t, n, c, lo, hi, profile, shape) == expected, exact


@pytest.mark.parametrize("profile", PROFILES)
def test_rise_fall_alternates_starting_with_growth(profile: str) -> None:
    """Cycle k of rise_fall equals growth for even k and falling for odd k, pointwise."""
    n, c, lo, hi = 120, 6, 2, 8
    period = n // c
    for t in range(n):
        shape = "growth" if (t // period) % 2 == 0 else "falling"
        assert cyclic_bits(t, n, c, lo, hi, profile, "rise_fall") == \
            cyclic_bits(t, n, c, lo, hi, profile, shape), t
    assert cyclic_bits(0, n, c, lo, hi, profile, "rise_fall") == lo
    assert cyclic_bits(period, n, c, lo, hi, profile, "rise_fall") == hi


def test_cycles_above_steps_is_a_config_error() -> None:
    """More cycles than training steps cannot be scheduled, and cycles of one step never
    leave min_bits (issue 28 item 1): ConfigErrors naming the key and a number that fits;
    two steps per cycle cycle (with a warning: fewer steps than bit levels)."""
    cfg = ScheduleConfig(name="cpt_cosine", kind="cyclic", cycles=32)
    with pytest.raises(ConfigError) as err:
        build_schedule(cfg, total_steps=31)
    assert err.value.key == "schedule.cycles" and "31" in str(err.value)
    with pytest.raises(ConfigError, match="cycles of one step.*n <= 10 \\(a step per bit level: 6\\)"):
        build_schedule(cfg, total_steps=63)
    two = build_schedule(cfg, total_steps=64)
    assert two.cycles == 32 and two.bit_ranges()["bits_fw_max"] == 6  # 3, 6, 3, 6, ...
    assert two.cycle_warning().startswith("cycles of 2 steps are shorter than the 6 bit levels")
    assert build_schedule(cfg, total_steps=192).cycle_warning() is None


def test_unknown_profile_and_shape_are_config_errors() -> None:
    """An unknown cyclic profile or shape, or an unknown kind, is a ConfigError naming the offending key."""
    with pytest.raises(ConfigError, match="schedule.profile"):
        build_schedule(ScheduleConfig(kind="cyclic", profile="sine"), 100)
    with pytest.raises(ConfigError, match="schedule.shape"):
        build_schedule(ScheduleConfig(kind="cyclic", shape="zigzag"), 100)
    with pytest.raises(ConfigError, match="schedule.kind"):
        build_schedule(ScheduleConfig(kind="random"), 100)


def test_bounds_override_the_configured_range() -> None:
    """PRT bounds (min, max) replace min_bits/max_bits."""
    cfg = ScheduleConfig(kind="cyclic", min_bits=3, max_bits=8, cycles=2)
    sched = build_schedule(cfg, 20, bounds=(4, 6))
    assert sched.fw_range == (4, 6)
    assert {sched.bits_at(t)[0] for t in range(20)} == {4, 5, 6}


def cost_ratio_vs_static(lo: int, hi: int, bw: int, profile: str = "cosine",
                         shape: str = "growth", steps: int = 64_000) -> float:
    """Cost of a cyclic lo..hi/bw run over the static hi/bw run, every layer quantized."""
    macs = {"conv": 1_000_000, "fc": 640}
    everything = set(macs)
    cyc = PrecisionSchedule("cyclic", steps, bw_bits=bw, min_bits=lo, max_bits=hi, cycles=32,
                            profile=profile, shape=shape)
    static = PrecisionSchedule("static", steps, bits=hi, bw_bits=bw)
    return relative_cost_of(cyc, macs, everything) / relative_cost_of(static, macs, everything)


@pytest.mark.parametrize("lo,hi,saving", [(3, 8, 0.3667), (3, 6, 0.3004), (4, 8, 0.302),
                                          (5, 8, 0.232)])
def test_cpt_savings_match_the_paper(lo: int, hi: int, saving: float) -> None:
    """CPT cosine lo..hi/hi over the paper's 64k steps, 32 cycles saves what the paper reports."""
    assert 1 - cost_ratio_vs_static(lo, hi, hi) == pytest.approx(saving, abs=0.001)


def test_cpt_saving_through_the_ledger() -> None:
    """The run ledger agrees: 3..8/8 cosine costs 63.33% of static 8/8 (every layer quantized)."""
    steps = 64_000
    macs = {"a": 442_368, "b": 2_359_296, "fc": 640}
    cyc = build_schedule(ScheduleConfig(kind="cyclic", min_bits=3, max_bits=8, bw_bits=8,
                                        cycles=32), steps)
    static = build_schedule(ScheduleConfig(kind="static", bits=8, bw_bits=8), steps)
    ledgers = []
    for sched in (cyc, static):
        ledger, walker = CostLedger(macs), PrecisionScheduler(sched)
        for _ in range(steps):
            fw, bw = walker.current()
            ledger.add({n: (fw, bw) for n in macs}, 128)
            walker.advance()
        ledgers.append(ledger)
    assert ledgers[1].relative_cost == 192 / 3072
    assert 1 - ledgers[0].bitops / ledgers[1].bitops == pytest.approx(0.3667, abs=0.001)
    all_q = relative_cost_of(cyc, macs, set(macs))
    assert ledgers[0].relative_cost == pytest.approx(all_q, rel=1e-12)


def test_relative_cost_counts_unquantized_layers_at_32() -> None:
    """A layer outside the quantized set costs 3072 per MAC whatever the schedule says."""
    sched = PrecisionSchedule("static", 10, bits=8, bw_bits=8)
    macs = {"q": 300, "fp": 100}
    assert relative_cost_of(sched, macs, {"q"}) == (300 * 192 + 100 * 3072) / (400 * 3072)


def test_deficit_schedule() -> None:
    """Deficit: min bits for the first K steps, then max bits; backward bits fixed."""
    sched = build_schedule(ScheduleConfig(kind="deficit", min_bits=3, max_bits=8, bw_bits=6,
                                          deficit_steps=40), 100)
    assert [sched.bits_at(t) for t in (0, 1, 39)] == [(3, 6)] * 3
    assert [sched.bits_at(t) for t in (40, 41, 99)] == [(8, 6)] * 3
    assert sched.fw_range == (3, 8)
    with pytest.raises(ConfigError, match="deficit_steps"):
        build_schedule(ScheduleConfig(kind="deficit", deficit_steps=101), 100)
    zero = build_schedule(ScheduleConfig(kind="deficit", min_bits=3, max_bits=8,
                                         deficit_steps=0), 10)
    assert {zero.bits_at(t)[0] for t in range(10)} == {8}


def test_static_and_fp32_schedules() -> None:
    """static: (bits, bw_bits) every step; fp32: 32/32; a float format fixes the width."""
    static = build_schedule(ScheduleConfig(kind="static", bits=6, bw_bits=7), 50)
    assert {static.bits_at(t) for t in range(50)} == {(6, 7)}
    assert build_schedule(ScheduleConfig(kind="fp32"), 50).bits_at(3) == (32, 32)
    assert build_schedule(ScheduleConfig(kind="static"), 50, fixed_bits=16).bits_at(0) == (16, 16)
    with pytest.raises(ConfigError):
        build_schedule(ScheduleConfig(kind="cyclic"), 50, fixed_bits=16)


def test_scheduler_resumes_where_it_stopped() -> None:
    """The stateful walker's state_dict restores the step: same bits as an unbroken walk."""
    sched = PrecisionSchedule("cyclic", 60, min_bits=2, max_bits=8, cycles=3, shape="rise_fall")
    a = PrecisionScheduler(sched)
    walk = []
    for _ in range(60):
        walk.append(a.current())
        a.advance()
    b = PrecisionScheduler(sched)
    for _ in range(25):
        b.advance()
    c = PrecisionScheduler(sched)
    c.load_state_dict(b.state_dict())
    rest = []
    for _ in range(35):
        rest.append(c.current())
        c.advance()
    assert rest == walk[25:]
