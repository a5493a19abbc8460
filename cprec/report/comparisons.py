"""Each group of a report against its baseline, with the statistics of stats.py.

A group's baseline is the group of the same report that differs from it only in schedule
settings and trains at the baseline precision (reproduction.py finds it as the paper
columns do): the paper's ``vs`` precision where the preset has figures, else the static
precision of the most forward bits among the groups of the same setting (``8/8``: the
static 8-bit run a cyclic one is compared with). Compared: the final accuracy in points
(language models: final perplexity) with its 95% CI and Welch's p-value, and the cost
(GBitOPs, exact: no CI). The papers' figures get a verdict on the measured best-accuracy
(best-perplexity) gain's CI: consistent, below or above.
"""

from __future__ import annotations

import math
from typing import Any

from cprec.report.reproduction import PaperFigures
from cprec.report.stats import FEW, mean_ci, verdict, welch

CI_STATS = ("final_acc", "best_acc", "final_ppl", "best_ppl", "gbitops")
FIELDS = ("n", *[f"{s}_ci_{e}" for s in CI_STATS for e in ("lo", "hi")], "baseline", "diff_metric",
          "diff", "diff_ci_lo", "diff_ci_hi", "p_value", "cost_diff", "cost_diff_pct", "note",
          "paper_ci", "verdict")


def values(runs: list[Any], name: str) -> list[float]:
    """A summary field over the completed runs, finite numbers only."""
    return [float(v) for r in runs if r.status == "completed"
            and isinstance(v := r.summary.get(name), int | float) and math.isfinite(v)]


def _headline(row: dict) -> str:
    return "final_ppl" if row.get("final_ppl_mean") is not None else "final_acc"


def add_statistics(rows: list[dict], group_runs: list[list[Any]], baselines: list[int | None],
                   figures: list[PaperFigures | None]) -> None:
    """Add FIELDS to every report row: row i has the runs ``group_runs[i]``, its baseline is
    row ``baselines[i]`` (None: none in this report) and its paper's figures ``figures[i]``."""
    for row, runs in zip(rows, group_runs):
        row.update(dict.fromkeys(FIELDS, None))
        row["n"], row["note"], row["verdict"], row["paper_ci"] = len(values(runs, "gbitops")), "", "", ""
        for name in CI_STATS:
            row[f"{name}_ci_lo"], row[f"{name}_ci_hi"] = mean_ci(values(runs, name))
    for i, (row, runs, base, fig) in enumerate(zip(rows, group_runs, baselines, figures)):
        if base is None or base == i:
            continue
        base_row, base_runs, metric = rows[base], group_runs[base], _headline(row)
        scale = 100 if metric == "final_acc" else 1  # accuracy differences in points
        test = welch(values(runs, metric), values(base_runs, metric))
        row.update(baseline=base_row["group"], diff_metric=metric, p_value=test["p"],
                   diff=_scaled(test["diff"], scale), diff_ci_lo=_scaled(test["ci_lo"], scale),
                   diff_ci_hi=_scaled(test["ci_hi"], scale))
        if row["gbitops_mean"] is not None and base_row["gbitops_mean"]:
            row["cost_diff"] = row["gbitops_mean"] - base_row["gbitops_mean"]
            row["cost_diff_pct"] = 100 * row["cost_diff"] / base_row["gbitops_mean"]
        few = min(row["n"], base_row["n"])
        if few < FEW:
            row["note"] = f"n < {FEW}: {'no CI' if few < 2 else 'a wide CI'}, read with care"
        if fig is not None:
            _paper_verdict(row, runs, base_runs, fig)


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else scale * value


def _paper_verdict(row: dict, runs: list[Any], base_runs: list[Any], fig: PaperFigures) -> None:
    """The paper's best-accuracy gain (points) or best-perplexity change against the measured one's CI."""
    if fig.acc_gain is not None:
        test, gain, scale = welch(values(runs, "best_acc"), values(base_runs, "best_acc")), fig.acc_gain, 100
    elif fig.ppl_gain is not None:
        test, gain, scale = welch(values(runs, "best_ppl"), values(base_runs, "best_ppl")), fig.ppl_gain, 1
    else:
        return
    if test["ci_lo"] is None:
        row["verdict"] = "n < 2: no CI"
        return
    lo, hi = scale * test["ci_lo"], scale * test["ci_hi"]
    row["paper_ci"] = f"[{lo:+.2f}, {hi:+.2f}]"
    row["verdict"] = verdict(gain, lo, hi)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else f"{value:{fmt}}"


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_markdown(rows: list[dict]) -> str:
    """The groups against their baselines ('' when no group has one in the report)."""
    compared = [r for r in rows if r.get("baseline")]
    if not compared:
        return ""
    lines = ["## Against the baseline", "",
             "| group | baseline | n | Δ final | 95% CI | p (Welch) | Δ GBitOPs | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in compared:
        acc = r["diff_metric"] == "final_acc"
        unit = " pts" if acc else " ppl"
        ci = ("-" if r["diff_ci_lo"] is None else
              f"[{r['diff_ci_lo']:+.2f}, {r['diff_ci_hi']:+.2f}]")
        base_n = next((b["n"] for b in rows if b["group"] == r["baseline"]), "?")
        cost = "-" if r["cost_diff"] is None else f"{r['cost_diff']:+.4g} ({r['cost_diff_pct']:+.1f}%)"
        lines.append(f"| {r['group']} | {r['baseline']} | {r['n']} vs {base_n} | "
                     f"{_num(r['diff'], '+.2f')}{unit if r['diff'] is not None else ''} | {ci} | "
                     f"{_p(r['p_value'])} | {cost} | {r['note']} |")
    lines += ["", "Δ final: the group's mean final test accuracy (points; language models: final "
              "perplexity) minus its baseline's, 95% CI and two-sided p-value from Welch's t-test "
              "over the completed runs (seeds); Δ GBitOPs: mean training cost difference (exact: "
              "the cost does not depend on the seed). Baseline: the group differing only in "
              "schedule settings at the baseline precision (the paper's, else the static one "
              "with the most bits)."]
    return "\n".join(lines) + "\n"
