"""The statistics of `cprec report`: 95% confidence intervals over seeds (Student t), each
group against its baseline (Welch's t-test), and a verdict on the papers' figures.

Pure Python (math only; no scipy, no numpy: the report answers in a second): Student's t
distribution through the regularized incomplete beta function (a continued fraction,
Numerical Recipes' betacf), its quantiles by bisection. tests/report/test_stats.py checks
them against scipy.
"""

from __future__ import annotations

import math

LEVEL = 0.95
FEW = 3  # fewer completed runs than this in a group or its baseline: the comparison says so


def _betacf(a: float, b: float, x: float) -> float:
    tiny, fpmin = 1e-15, 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > fpmin else fpmin)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for aa in (even, odd):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > fpmin else fpmin)
            c = 1 + aa / c
            c = c if abs(c) > fpmin else fpmin
            h *= d * c
        if abs(d * c - 1) < tiny:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    if t * t < df:  # near 0: the complement keeps the precision df / (df + t^2) rounds away
        tail = 0.5 * (1 - betainc(0.5, df / 2, t * t / (df + t * t)))
    else:
        tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on t_cdf; |t| < 1e6 covers df >= 1, p in [1e-6, 1 - 1e-6])."""
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return (lo + hi) / 2


def mean_ci(values: list[float], level: float = LEVEL) -> tuple[float | None, float | None]:
    """The ``level`` confidence interval of the mean (Student t, n - 1 df); None for n < 2."""
    n = len(values)
    if n < 2:
        return None, None
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * s / math.sqrt(n)
    return m - half, m + half


def welch(a: list[float], b: list[float], level: float = LEVEL) -> dict:
    """mean(a) - mean(b), its ``level`` CI (Welch-Satterthwaite df) and the two-sided p-value
    of Welch's t-test; CI and p are None when a side has fewer than two values, p also when
    both sides have no spread (nothing to test: the CI is the difference itself)."""
    na, nb = len(a), len(b)
    out: dict = {"diff": None, "ci_lo": None, "ci_hi": None, "p": None, "df": None}
    if not na or not nb:
        return out
    ma, mb = sum(a) / na, sum(b) / nb
    out["diff"] = ma - mb
    if na < 2 or nb < 2:
        return out
    va = sum((v - ma) ** 2 for v in a) / (na - 1) / na
    vb = sum((v - mb) ** 2 for v in b) / (nb - 1) / nb
    se = math.sqrt(va + vb)
    if se == 0:
        out["ci_lo"] = out["ci_hi"] = out["diff"]
        return out
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    t = out["diff"] / se
    out.update(ci_lo=out["diff"] - half, ci_hi=out["diff"] + half, df=df, p=2 * (1 - t_cdf(abs(t), df)))
    return out


def verdict(paper_gain: float | None, ci_lo: float | None, ci_hi: float | None) -> str:
    """A paper's reported gain against the measured gain's CI: "consistent" when the paper's
    gain lies inside it, "below" when the whole measured CI lies below the paper's gain (the
    runs gain less than the paper reports), "above" when it lies above; "" without a CI."""
    if paper_gain is None or ci_lo is None or ci_hi is None:
        return ""
    if ci_lo <= paper_gain <= ci_hi:
        return "consistent"
    return "below" if ci_hi < paper_gain else "above"
