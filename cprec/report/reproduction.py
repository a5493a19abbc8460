"""The papers' numbers beside ours: a preset's reported figures against what its runs measured.

A paper preset carries what the paper reports as data (the ``paper`` config key), keyed by
the precision a run trains at (``<min>-<max>/<bw>`` cyclic, ``<bits>/<bw>`` static)::

    paper:
      source: CPT (Fu et al., ICLR 2021), CIFAR-100 figure
      results:
        3-8/8: {vs: 8/8, acc_gain: 0.91, cost_saving: 36.67}

Papers report a schedule against its static baseline (accuracy gain in points, cost
saving in percent), so that is what is compared: for a group of runs with a paper entry,
the same quantities are measured against the group of the same report that differs only
in its schedule settings and trains at the baseline's precision. CPT reports the best test
accuracy over training; so does the measured gain. Language models: the change of the best
test perplexity (``ppl_gain``, negative is better).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# points of (best) accuracy, percent of GBitOPs; language models: (best) perplexity change
FIGURES = ("acc_gain", "cost_saving", "ppl_gain")


@dataclass(frozen=True)
class PaperFigures:
    """What a paper reports for one precision setting: gains over the ``vs`` setting."""

    source: str
    vs: str
    acc_gain: float | None = None
    cost_saving: float | None = None
    ppl_gain: float | None = None  # perplexity change (negative: better)


def precision_label(summary: dict) -> str:
    """``3-8/8`` (cyclic), ``8/8`` (static) from a run's summary.json."""
    lo, hi, bw = (summary.get(k) for k in ("bits_fw_min", "bits_fw_max", "bits_bw"))
    return f"{lo}/{bw}" if lo == hi else f"{lo}-{hi}/{bw}"


def paper_figures(config: Any, summary: dict) -> PaperFigures | None:
    """The figures a run's config (its ``paper`` key) holds for the run's precision, if any."""
    paper = config.get("paper") if isinstance(config, dict) else None
    results = paper.get("results") if isinstance(paper, dict) else None
    entry = results.get(precision_label(summary)) if isinstance(results, dict) else None
    if not isinstance(entry, dict) or "vs" not in entry:
        return None
    numbers = {k: float(entry[k]) for k in FIGURES if isinstance(entry.get(k), int | float)}
    return PaperFigures(str(paper.get("source", "")), str(entry["vs"]), **numbers)


def describe(acc_gain: float | None, cost_saving: float | None, vs: str,
             ppl_gain: float | None = None) -> str:
    """``+0.91 pts, -36.67% cost vs 8/8``; language models ``-0.56 ppl, ...`` (a missing
    figure is left out)."""
    parts = []
    if acc_gain is not None:
        parts.append(f"{acc_gain:+.2f} pts")
    if ppl_gain is not None:
        parts.append(f"{ppl_gain:+.2f} ppl")
    if cost_saving is not None:
        parts.append(f"-{cost_saving:.2f}% cost")
    return f"{', '.join(parts)} vs {vs}" if parts else "-"


def measured_gains(stats: dict, baseline: dict) -> tuple[float | None, float | None, float | None]:
    """(best-accuracy gain in points, cost saving in %, best-perplexity change) of a group's
    stats over a baseline's."""
    acc = cost = ppl = None
    if stats.get("best_acc_mean") is not None and baseline.get("best_acc_mean") is not None:
        acc = 100 * (stats["best_acc_mean"] - baseline["best_acc_mean"])
    if stats.get("gbitops_mean") and baseline.get("gbitops_mean"):
        cost = 100 * (1 - stats["gbitops_mean"] / baseline["gbitops_mean"])
    if stats.get("best_ppl_mean") is not None and baseline.get("best_ppl_mean") is not None:
        ppl = stats["best_ppl_mean"] - baseline["best_ppl_mean"]
    return acc, cost, ppl


def _setting(params: dict[str, str]) -> tuple:
    """A group's params without its schedule settings: what a baseline must share."""
    return tuple(sorted((k, v) for k, v in params.items()
                        if k != "schedule" and not k.startswith("schedule.")))


def compare_with_papers(rows: list[dict], params: list[dict[str, str]], labels: list[str],
                        figures: list[PaperFigures | None]) -> None:
    """Add ``paper``, ``paper_source`` and ``measured`` to every report row (empty where the
    row's runs have no paper figures). Row i's group has ``params[i]``, trains at precision
    ``labels[i]`` and has ``figures[i]``."""
    keyed = {(_setting(p), label): row for p, label, row in zip(params, labels, rows)}
    for row, p, fig in zip(rows, params, figures):
        if fig is None:
            row["paper"] = row["paper_source"] = row["measured"] = ""
            continue
        base = keyed.get((_setting(p), fig.vs))
        row["paper"] = describe(fig.acc_gain, fig.cost_saving, fig.vs, fig.ppl_gain)
        row["paper_source"] = fig.source
        acc, cost, ppl = measured_gains(row, base) if base is not None else (None, None, None)
        row["measured"] = (describe(acc, cost, fig.vs, ppl) if base is not None
                           else f"no {fig.vs} runs in this report")


def _forward_bits(label: str) -> int | None:
    """The forward bits of a static precision label (``8/8``); None for a cyclic one."""
    head = label.split("/", 1)[0]
    return int(head) if head.isdigit() else None


def baselines(params: list[dict[str, str]], labels: list[str],
              figures: list[PaperFigures | None]) -> list[int | None]:
    """The row index of each group's baseline (None: none in the report): a group of the same
    setting (overrides apart from schedule settings) at the paper's ``vs`` precision where
    the group has paper figures, else the static one with the most forward bits below 32
    (32/32 only when no other is there). A baseline is its own (no comparison)."""
    by_setting: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_setting.setdefault(_setting(p), []).append(i)
    out: list[int | None] = []
    for p, fig in zip(params, figures):
        same = by_setting[_setting(p)]
        if fig is not None:
            out.append(next((j for j in same if labels[j] == fig.vs), None))
            continue
        static = [(bits < 32, bits, -j) for j in same if (bits := _forward_bits(labels[j])) is not None]
        out.append(-max(static)[2] if static else None)
    return out
