"""Delayed scaling's amax history against a hand-computed sequence (TE DelayedScaling)."""

from __future__ import annotations

import pytest
import torch

from cprec.quant.delayed import AmaxHistory


def run(history: AmaxHistory, amaxes: list[float]) -> list[float]:
    """The scale each step casts with, then record its amax and update (one TE step)."""
    used = []
    for amax in amaxes:
        used.append(float(history.scale))
        history.record(torch.tensor(amax))
        history.update()
    return used


def test_history_reproduces_a_hand_computed_sequence() -> None:
    """Length 3, E4M3: the scale for step t+1 is 448 / max(amax of steps t-2..t); step 0
    casts with the initial 1.0. Hand-computed, with TE's rolled slots after each update:
      step 0: scale 1,   record 2   -> max(2,0,0) = 2   -> 224, slots [0, 0, 2]
      step 1: scale 224, record 8   -> max(8,0,2) = 8   -> 56,  slots [0, 2, 8]
      step 2: scale 56,  record 1   -> max(1,2,8) = 8   -> 56,  slots [0, 8, 1]
      step 3: scale 56,  record 4   -> max(4,8,1) = 8   -> 56,  slots [0, 1, 4]
      step 4: scale 56,  record 0.5 -> max(.5,1,4) = 4  -> 112, slots [0, 4, .5]
      step 5: scale 112, record 0.5 -> max(.5,4,.5) = 4 -> 112, slots [0, .5, .5]
      step 6: scale 112, record 0   -> max(0,.5,.5) = .5 -> 896"""
    history = AmaxHistory(length=3, max_value=448.0)
    assert run(history, [2, 8, 1, 4, 0.5, 0.5, 0]) == [1, 224, 56, 56, 56, 112, 112]
    assert float(history.scale) == 896
    assert history.history.tolist() == [0, 0.5, 0]


def test_zero_and_nonfinite_amax_keep_the_scale() -> None:
    history = AmaxHistory(length=1, max_value=57344.0)
    assert run(history, [4, 0, float("inf"), float("nan")]) == [1, 14336, 14336, 14336]
    assert float(history.scale) == 14336


def test_nan_amax_counts_as_zero() -> None:
    """TE takes maxima with fmaxf (NaN skipped): a NaN step leaves 4 the history's max, and
    two steps later the window holds only 1s (NaN propagation would keep 112 frozen)."""
    history = AmaxHistory(length=2, max_value=448.0)
    assert run(history, [4, float("nan"), 1, 1]) == [1, 112, 112, 448]


def test_most_recent_and_margin() -> None:
    history = AmaxHistory(length=4, max_value=448.0, margin=1, algo="most_recent")
    assert run(history, [2, 8, 1]) == [1, 112, 28]
    assert float(history.scale) == 224


def test_state_dict_resumes_the_sequence() -> None:
    amaxes = [3.0, 0.7, 5.0, 2.0, 9.0, 1.0]
    whole = run(AmaxHistory(length=2), amaxes)
    first = AmaxHistory(length=2)
    head = run(first, amaxes[:3])
    second = AmaxHistory(length=2)
    second.load_state_dict(first.state_dict())
    assert head + run(second, amaxes[3:]) == whole
    with pytest.raises(ValueError):
        AmaxHistory(length=3).load_state_dict(first.state_dict())
