"""The report's statistics against scipy on fixed numbers; the verdict and the baseline
choice on constructed cases."""

from __future__ import annotations

import math

import pytest

from cprec.report.reproduction import PaperFigures, baselines
from cprec.report.stats import mean_ci, t_cdf, t_quantile, verdict, welch

A = [0.912, 0.905, 0.921, 0.899, 0.915]
B = [0.887, 0.893, 0.881, 0.902, 0.879, 0.890]


def test_t_distribution_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4.5, 9, 30, 200):
        for t in (-3.2, -0.7, 0.0, 0.4, 1.96, 5.0):
            assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-10)
        for p in (0.025, 0.5, 0.9, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-9)


def test_confidence_interval_and_welch_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    lo, hi = mean_ci(A)
    ref = stats.t.interval(0.95, len(A) - 1, loc=sum(A) / len(A), scale=stats.sem(A))
    assert (lo, hi) == pytest.approx(ref, rel=1e-9)
    test = welch(A, B)
    ref = stats.ttest_ind(A, B, equal_var=False)
    assert test["p"] == pytest.approx(ref.pvalue, rel=1e-7)
    assert test["diff"] == pytest.approx(sum(A) / len(A) - sum(B) / len(B))
    ci = ref.confidence_interval(0.95)
    assert (test["ci_lo"], test["ci_hi"]) == pytest.approx((ci.low, ci.high), rel=1e-8)


def test_small_and_degenerate_samples() -> None:
    assert mean_ci([0.9]) == (None, None)
    one = welch([0.9], B)
    assert one["diff"] == pytest.approx(0.9 - sum(B) / len(B)) and one["p"] is None and one["ci_lo"] is None
    flat = welch([0.5, 0.5], [0.4, 0.4])  # no spread: the difference, nothing to test
    assert flat["p"] is None and flat["ci_lo"] == flat["ci_hi"] == pytest.approx(0.1)
    assert math.isclose(welch(A, A)["p"], 1.0)


def test_verdict_places_the_papers_gain_against_the_measured_ci() -> None:
    assert verdict(0.91, 0.2, 1.5) == "consistent"
    assert verdict(0.91, -0.8, 0.3) == "below"  # the runs gain less than the paper reports
    assert verdict(0.91, 1.2, 2.0) == "above"
    assert verdict(0.91, 0.91, 0.91) == "consistent"
    assert verdict(None, 0.1, 0.2) == verdict(0.5, None, None) == ""


def test_the_baseline_is_the_static_group_of_the_same_setting() -> None:
    """cpt vs static at 8 bits (not 6, not fp32) within each model; the paper's vs wins."""
    params = [{"schedule": s, "model": m} for m in ("mlp", "lenet") for s in ("cpt", "s8", "s6", "fp32")]
    labels = ["3-8/8", "8/8", "6/8", "32/32"] * 2
    figures = [None] * 8
    assert baselines(params, labels, figures) == [1, 1, 1, 1, 5, 5, 5, 5]
    figures[0] = PaperFigures("paper", "6/8", acc_gain=0.5)
    assert baselines(params, labels, figures)[0] == 2
    assert baselines(params[:1] + params[3:4], ["3-8/8", "32/32"], [None, None]) == [1, 1]
    assert baselines(params[:1], ["3-8/8"], [None]) == [None]
