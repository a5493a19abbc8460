"""Every picture cprec draws (PNG, matplotlib Agg): the report's accuracy vs cost and per-run
curves, the precision range test and the schedule preview.

Uses matplotlib's Figure API directly (no pyplot): no global state, no display needed.
"""

from __future__ import annotations

import io
import re
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from cprec.engine.runs import atomic_write_bytes, read_metrics
from cprec.report.costs import GBITOPS, Cost

MAX_CURVE_POINTS = 20000  # schedule samples per run plot; plenty for 32 cycles


def plain_ticks(ax: Any) -> None:
    """Tick labels a reader takes as they are: no offset (``+2.87e1``) and no scientific
    notation on linear axes; log axes labelled as plain numbers (1-2-5 ticks over a wide
    range, a few evenly spaced ticks over a narrow one)."""
    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            lo, hi = sorted(abs(v) for v in axis.get_view_interval())
            wide = lo > 0 and hi / lo >= 10
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)) if wide else MaxNLocator(5))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        elif axis.get_scale() == "linear" and isinstance(axis.get_major_formatter(), ScalarFormatter):
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            axis.set_major_formatter(formatter)


def bits_axis(axis: Any, values: list[int]) -> None:
    """An axis of bits: integer ticks, a bit of room above and below the levels drawn."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=3))
    if values:
        axis.set_view_interval(min(values) - 1, max(values) + 1, ignore=True)


def _save(fig: Figure, path: Path) -> None:
    """PNG bytes rendered in memory, then written atomically (engine/runs.py's rule); every
    axis gets plain tick labels first (``plain_ticks``)."""
    for ax in fig.axes:
        plain_ticks(ax)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def _wrap(label: str, width: int = 90) -> str:
    """Long override labels wrapped at commas so the legend stays inside the picture."""
    return textwrap.fill(label.replace(",", ", "), width).replace(", ", ",")


def _half_ci(row: dict[str, Any], name: str) -> float:
    """Half the width of a group's 95% CI of ``name`` (0 without one: fewer than two runs)."""
    lo, hi = row.get(f"{name}_ci_lo"), row.get(f"{name}_ci_hi")
    return 0.0 if lo is None or hi is None else (hi - lo) / 2


def accuracy_vs_cost(rows: list[dict[str, Any]], path: Path, not_completed: int = 0,
                     metric: str = "acc", cost: Cost = GBITOPS) -> None:
    """Final accuracy (``metric="ppl"``: perplexity, lower is better) against ``cost``
    (GBitOPs by default; report/costs.py) per group, error bars the 95% CIs over seeds
    (report/comparisons.py; none for one run), Pareto front marked."""
    key, scale, x = f"final_{metric}", (100 if metric == "acc" else 1), f"{cost.key}_mean"
    shown = [r for r in rows if r[f"{key}_mean"] is not None and r.get(x) is not None]
    labels = [_wrap(f"{r['group']} ({r['completed']}/{r['runs']} runs)") for r in shown]
    legend_lines = sum(label.count("\n") + 1 for label in labels) + 1
    fig = Figure(figsize=(8, 4.5 + 0.2 * legend_lines), layout="constrained")
    ax = fig.add_subplot()
    for i, (r, label) in enumerate(zip(shown, labels)):
        ax.errorbar(r[x], scale * r[f"{key}_mean"], xerr=_half_ci(r, cost.key),
                    yerr=scale * _half_ci(r, key), fmt="o", capsize=4, color=f"C{i % 10}",
                    label=label)
    front = sorted((r[x], scale * r[f"{key}_mean"]) for r in shown if r["pareto"])
    if front:  # the best accuracy (perplexity) reachable at each cost: a staircase through the front
        xs, ys = zip(*front)
        ax.plot(xs, ys, "--", color="0.4", zorder=0, drawstyle="steps-post")
        ax.scatter(xs, ys, s=220, facecolors="none", edgecolors="k", label="Pareto front")
    costs = [r[x] for r in shown if r[x] > 0]
    if costs and max(costs) / min(costs) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks, plain numbers
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"training cost ({cost.label})")
    what = "accuracy" if metric == "acc" else "perplexity"
    ax.set_ylabel("final test accuracy (%)" if metric == "acc" else "final test perplexity (lower is better)")
    title = f"final {what} vs training cost (mean and 95% CI over seeds, Student t)"
    if not_completed:
        title += f"\n{not_completed} run(s) failed, diverged or unfinished: see report.md"
    ax.set_title(title, fontsize=10, color="k" if not not_completed else "C3")
    ax.grid(alpha=0.3)
    if shown:
        fig.legend(loc="outside lower center", fontsize=8, ncols=1, frameon=False)
    else:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    _save(fig, path)


def run_plot_name(label: str, seed: Any, used: set[str], run_dir: Path | None = None) -> str:
    """A file name for one run's plot, unique within the report: label and seed, or the run
    directory's name when the summary does not say the seed (a damaged or foreign run)."""
    known = f"seed{seed}" if seed is not None else (Path(run_dir).name if run_dir else "seed-unknown")
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{label}-{known}")[:120]
    name, n = f"{stem}.png", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return name


def rung_labels(summary: dict) -> dict[int, str]:
    """A ladder run's rungs by width (its saved schedule), or {} for a run of plain bits."""
    from cprec.precision.schedules import PrecisionSchedule  # torch-free

    spec = summary.get("schedule_spec")
    if not isinstance(spec, dict) or not spec.get("ladder"):
        return {}
    return PrecisionSchedule.from_spec(spec).rung_labels()


def label_rungs(ax, labels: dict[int, str]) -> None:
    """Name a ladder's rungs on a bits axis: ``mxfp4 (4)``."""
    if labels:
        ax.set_yticks(sorted(labels), [f"{labels[w]} ({w})" for w in sorted(labels)])
        ax.set_ylabel("rung (bits)")


def schedule_curve(summary: dict) -> tuple[list[int], list[int], list[int]] | None:
    """Forward/backward bits at every training step, from the schedule the run saved.

    metrics.jsonl samples bits only at evaluations, which aliases a cyclic schedule (32
    cycles, one evaluation per epoch); the schedule is a pure function of the step, and
    summary.json's ``schedule_spec`` is the resolved schedule itself (bounds included), so
    the exact curve comes back. None for runs that did not save it.
    """
    from cprec.precision.schedules import PrecisionSchedule  # torch-free

    spec = summary.get("schedule_spec")
    if not isinstance(spec, dict) or spec.get("kind") in ("ldp", "cpt_ldp"):
        return None  # learned per layer: the layer heatmap (ldp_plots.py) shows those bits
    sched = PrecisionSchedule.from_spec(spec)
    steps = list(range(0, sched.total_steps, max(1, sched.total_steps // MAX_CURVE_POINTS)))
    bits = [sched.bits_at(t) for t in steps]
    return [t + 1 for t in steps], [b[0] for b in bits], [b[1] for b in bits]


def run_curves(run_dir: Path, summary: dict, label: str, path: Path) -> bool:
    """Bits (top) and accuracy or perplexity (bottom) over training steps for one run; False
    if no data."""
    records = read_metrics(run_dir)
    if not records:
        return False
    _save(run_figure(records, summary, label), path)
    return True


def run_figure(records: list[dict], summary: dict, label: str) -> Figure:
    """``run_curves``' picture of one run's metrics records and summary."""
    try:
        curve = schedule_curve(summary)
    except (KeyError, TypeError, ValueError):
        curve = None  # a foreign or damaged summary: fall back to the bits at evaluations
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = [r["step"] for r in records]
    if curve is not None:
        # bits of step t (0-based) hold over (t, t+1]: "pre" puts the eval markers on the line;
        # the forward line wide under the thin dashed backward one: both show where they agree
        top.step(curve[0], curve[1], where="pre", color="C0", lw=3, alpha=0.6, label="forward bits")
        top.step(curve[0], curve[2], where="pre", color="C3", lw=1.2, ls="--", label="backward bits")
    top.plot(steps, [r["bits_fw"] for r in records], "o", color="C0", ms=3,
             label="forward bits (at eval)" if curve is None else None)
    top.plot(steps, [r["bits_bw"] for r in records], "s", color="C3", ms=3, mfc="none",
             label="backward bits (at eval)" if curve is None else None)
    top.set_ylabel("bits")
    bits_axis(top.yaxis, [r[k] for r in records for k in ("bits_fw", "bits_bw")] +
              ([*curve[1], *curve[2]] if curve is not None else []))
    try:
        label_rungs(top, rung_labels(summary))
    except (KeyError, TypeError, ValueError):
        pass  # a damaged summary: plain bits
    top.legend(fontsize=8, loc="best")
    top.grid(alpha=0.3)
    metric, scale = ("ppl", 1) if "test_ppl" in records[-1] else ("acc", 100)
    bottom.plot(steps, [scale * r[f"test_{metric}"] for r in records], "o-", ms=3, label="test")
    bottom.plot(steps, [scale * r[f"train_{metric}"] for r in records], ".--", ms=3, label="train (window)")
    bottom.set_xlabel("training step")
    bottom.set_ylabel("accuracy (%)" if metric == "acc" else "perplexity")
    if metric == "ppl":
        bottom.set_yscale("log")
    bottom.legend(fontsize=8, loc="best")
    bottom.grid(alpha=0.3)
    status = summary.get("status", "missing")
    fig.suptitle(f"{label}  seed {summary.get('seed', '?')}  [{status}]", fontsize=10)
    return fig


def prt_curve(curve: list[dict], lower: int, upper: int, path: Path, title: str,
              upper_source: str = "measured", levels: tuple[int, int] | None = None) -> None:
    """``prt_figure`` written to ``path``."""
    _save(prt_figure(curve, lower, upper, title, upper_source, levels), path)


def prt_figure(curve: list[dict], lower: int, upper: int, title: str,
               upper_source: str = "measured", levels: tuple[int, int] | None = None) -> Figure:
    """The precision range test: smoothed training accuracy at each level tried (each
    marked), the measured lower bound, the upper bound drawn as measured or as configured
    (``upper_source``: measured | configured | top tried), and the levels of
    ``levels`` = (prt.start_bits, prt.max_bits) the test stopped before trying."""
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    tried = [r["bits"] for r in curve]
    ax.plot(tried, [r["train_acc"] for r in curve], "o-", label=f"levels tried ({len(tried)})")
    ax.axvline(lower, color="tab:green", ls="--", label=f"lower = {lower} (measured)")
    measured = upper_source == "measured"
    ax.axvline(upper, color="tab:red", ls="--" if measured else ":", lw=1.5 if measured else 2,
               label=f"upper = {upper} ({upper_source})")
    if levels is not None and tried and max(tried) < levels[1]:
        ax.axvspan(max(tried) + 0.5, levels[1] + 0.5, color="0.9", zorder=0,
                   label=f"not tried ({max(tried) + 1}..{levels[1]}): bounds found")
        ax.set_xlim(min(levels[0], *tried) - 0.5, levels[1] + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="forward bits", ylabel="smoothed train accuracy", title=f"PRT: {title}")
    ax.legend(fontsize=8)
    return fig


def schedule_bits(bits: list[tuple[int, int]], title: str, path: Path,
                  labels: dict[int, str] | None = None) -> None:
    """A schedule's forward and backward bits at every step of the run (`cprec schedule`);
    ``labels`` name a ladder's rungs by width (the y axis then shows the rungs)."""
    steps = range(len(bits))
    fig = Figure(figsize=(8, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.step(steps, [b[0] for b in bits], where="post", label="forward (weights, activations)")
    ax.step(steps, [b[1] for b in bits], where="post", ls="--", label="backward (errors)")
    ax.set(xlabel="training step", ylabel="bits", ylim=(0, max(max(max(b) for b in bits), 8) + 1),
           title=title)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    label_rungs(ax, labels or {})
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
