"""The cyclic profiles' arithmetic: a cycle's value at a step, as the authors' code computes it.

PAPERS.md sections 1-2: z = (t mod T) / T, D = max - min, rint; the cycle length T, the
shape, the flip of exp/rex falls and the rounding of ties are options (schedules.py turns
them into a run's bits, or positions on a ladder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# which way each cycle runs: growth rises every cycle (CPT; Better Schedules X_growth),
# fall_rise falls on cycles 0, 2, ... and rises on 1, 3, ... (Better Schedules X_decay);
# cprec's own: falling falls every cycle, rise_fall rises on cycles 0, 2, ... and falls on 1, 3, ...
SHAPES = ("growth", "fall_rise", "falling", "rise_fall")
# cycle length T from N steps and C cycles: floor(N / C) (CPT's code), + 1 (Better Schedules' code)
CYCLE_LENGTHS = {"floor": 0, "floor_plus_one": 1}
# a falling exp/rex cycle: the rising curve mirrored in time (horizontal, the Better Schedules
# train.py default) or upside down (vertical); cosine and linear look the same either way
FLIPS = ("horizontal", "vertical")
# exact: rint of the exact value (a true .5 goes to even, whatever float64 says); float:
# np.rint of the value float64 arithmetic gives, as the Better Schedules code rounds
TIES = ("exact", "float")


def _cosine(z: float) -> float:
    return 0.5 * (1.0 - np.cos(np.pi * z))


def _linear(z: float) -> float:
    return z


def _exp(z: float) -> float:
    return np.exp(-4 * z)


def _rex(y: float) -> float:
    return y / (1 - 0.9 + 0.9 * y)  # the authors' (1 - 0.9), a hair below 0.1 in float64


def _z(mod: int, period: int) -> float:
    return mod / period


def _y(mod: int, period: int) -> float:  # rex: 1 - z, in the authors' arithmetic
    return (period - mod) / period


@dataclass(frozen=True)
class Profile:
    """One row of PAPERS.md section 2's table, in the Better Schedules code's arithmetic.

    ``variable(t mod T, T)`` is the profile's x (z = (t mod T) / T, or for rex y = 1 - z,
    computed as (T - t mod T) / T like the authors), ``term(x)`` its curve in [0, 1]. A rising cycle is
    ``min + D term(x)`` when ``from_min`` (cosine, linear), else ``max - D term(x)`` (exp,
    rex); a falling one is its mirror image: ``max - D term(x)`` (from_min), upside down
    ``min + D term(x)`` (flip=vertical) or mirrored in time ``max - D term(1 - x)``
    (flip=horizontal). Adding a profile is one term function and one entry in PROFILES.
    """

    from_min: bool
    variable: Callable[[int, int], float]
    term: Callable[[float], float]

    def value(self, mod: int, period: int, lo: int, hi: int, fall: bool, flip: str) -> float:
        x, d = self.variable(mod, period), float(hi - lo)
        if self.from_min:
            return hi - d * self.term(x) if fall else lo + d * self.term(x)
        if not fall:
            return hi - d * self.term(x)
        return lo + d * self.term(x) if flip == "vertical" else hi - d * self.term(1.0 - x)


PROFILES: dict[str, Profile] = {
    "cosine": Profile(True, _z, _cosine), "linear": Profile(True, _z, _linear),
    "exp": Profile(False, _z, _exp), "rex": Profile(False, _y, _rex)}


def period_of(total_steps: int, cycles: int, rule: str = "floor") -> int:
    """T: floor(N / C) (CPT's code), or floor(N / C) + 1 (rule floor_plus_one, Better Schedules')."""
    return max(total_steps // cycles + CYCLE_LENGTHS[rule], 1)


def falls(shape: str, cycle: int) -> bool:
    """Whether cycle number ``cycle`` (0-based) of ``shape`` runs from the top down."""
    return {"growth": False, "falling": True, "fall_rise": cycle % 2 == 0,
            "rise_fall": cycle % 2 == 1}[shape]


def rint(value: float, ties: str = "exact") -> int:
    """Round half to even; ``exact`` snaps to 9 decimals first, so a true tie that float64
    lands an ulp off (cosine 2..8 at z = 1/3: 3.4999999999999996) still counts as .5."""
    return int(np.rint(round(float(value), 9) if ties == "exact" else value))


def cyclic_bits(step: int, total_steps: int, cycles: int, lo: int, hi: int,
                profile: str = "cosine", shape: str = "growth", *, flip: str = "horizontal",
                rule: str = "floor", ties: str = "exact") -> int:
    """Bits at ``step`` (0-based) of a cyclic schedule between ``lo`` and ``hi``.

    ``shape`` says which cycles rise and which fall (SHAPES), ``rule`` how long a cycle is
    (CYCLE_LENGTHS), ``flip`` how an exp/rex cycle falls (FLIPS), ``ties`` how a .5 rounds.
    """
    period = period_of(total_steps, cycles, rule)
    cycle, mod = divmod(step, period)
    return rint(PROFILES[profile].value(mod, period, lo, hi, falls(shape, cycle), flip), ties)


def bit_levels(lo: int, hi: int, bw_min_bits: int | None, bw_bits: int) -> int:
    """Bit levels one cycle passes through: hi - lo + 1, or the backward range's if it cycles."""
    return max(hi - lo + 1, 0 if bw_min_bits is None else bw_bits - bw_min_bits + 1)


def cycles_that_fit(total_steps: int, levels: int, rule: str, most: int) -> int:
    """The most cycles (at most ``most``) whose cycles have at least ``levels`` steps; 0: none."""
    return next((n for n in range(most, 0, -1) if period_of(total_steps, n, rule) >= levels), 0)
