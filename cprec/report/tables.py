"""`cprec report DIR...`: one table (markdown, CSV, JSON) and plots from run and sweep dirs.

Runs are grouped by what was varied on purpose: the Hydra overrides of each run, minus the
seed and keys that do not change the result (progress bar, output places). Each group gets
mean and sample std (ddof=1; 0 for one run) over its completed runs. Failed, diverged and
unfinished runs are counted in the table and listed under it, never silently dropped.

Not a Hydra app (it reads finished runs, it configures none), and free of torch imports so
it answers in a second.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cprec.config import RESULT_NEUTRAL_KEYS, is_result_neutral
from cprec.engine.runs import read_metrics, write_text
from cprec.engine.tracking import TRACKER_DIRS
from cprec.errors import CprecError
from cprec.report.comparisons import add_statistics, comparison_markdown
from cprec.report.costs import GBITOPS, Cost, extra_costs
from cprec.report.reproduction import (
    PaperFigures,
    baselines,
    compare_with_papers,
    paper_figures,
    precision_label,
)
from cprec.report.study import find_studies, read_study, study_markdown

STATS = ("final_acc", "best_acc", "gbitops", "relative_cost", "train_time_s")
# what loss-scaled runs add (numerics/loss_scale.py); shown as columns when some group has them
SCALING_STATS = ("underflow_rate", "skipped_steps")
# what language-model runs report instead of accuracy (tasks/language.py; lower is better)
LM_STATS = ("final_ppl", "best_ppl")
# overrides that do not change what a run computes: not part of a group's identity
IGNORED_KEYS = {"seed", *RESULT_NEUTRAL_KEYS}
IDENTITY = ("model", "dataset", "schedule")
STD_NOTE = "sample std (ddof=1) over completed runs; 0 for a single run"
CI_NOTE = "95% confidence interval of the mean over completed runs (Student t, n - 1 df); none for n < 2"
# how a run can end short of "completed" (DESIGN.md, engine); anything else counts as other
NOT_COMPLETED = ("failed", "diverged", "interrupted", "missing", "damaged")


class ReportError(CprecError):
    """A user mistake (missing directory, nothing to report): one line, exit code 2."""


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    summary: dict
    params: dict[str, str]  # identity + overrides that matter, in command-line order
    label: str = ""
    plot: str | None = None
    damaged: str | None = None  # a run file that could not be read, and why
    paper: PaperFigures | None = None  # what the preset's paper reports for this schedule

    @property
    def status(self) -> str:
        return str(self.summary.get("status", "missing"))

    @property
    def key(self) -> tuple:
        return tuple(sorted(self.params.items()))


@dataclass
class Group:
    label: str
    runs: list[Run] = field(default_factory=list)
    pareto: bool = False

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]

    def stats(self) -> dict[str, Any]:
        """Counts plus mean/std of every STATS field over the completed runs."""
        out: dict[str, Any] = {"group": self.label, "runs": len(self.runs),
                               "completed": len(self.completed)}
        for status in NOT_COMPLETED:
            out[status] = sum(r.status == status for r in self.runs)
        out["other"] = len(self.runs) - out["completed"] - sum(out[s] for s in NOT_COMPLETED)
        costs = [c.key for c in extra_costs([r.summary for r in self.completed])]
        for name in (*STATS, *LM_STATS, *SCALING_STATS, *costs):
            values = [float(v) for r in self.completed
                      if isinstance(v := r.summary.get(name), int | float) and math.isfinite(v)]
            out[f"{name}_mean"], out[f"{name}_std"] = mean_std(values)
        out["pareto"] = self.pareto
        out["seeds"] = " ".join(str(r.summary.get("seed", "?")) for r in self.runs)
        out["overrides"] = ",".join(f"{k}={v}" for k, v in self.runs[0].params.items())
        return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); std 0 for one value, None for none."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _natural(path: Path) -> list:
    """Sort key that puts job 10 after job 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.exists():
        return {"status": "missing", "error": "no summary.json (killed, or still running)"}
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"status": "damaged", "error": f"summary.json unreadable ({type(e).__name__}: {e})"}
    return summary if isinstance(summary, dict) else {"status": "damaged",
                                                      "error": "summary.json is not a JSON object"}


def _metrics_problem(run_dir: Path) -> str | None:
    """Why a run's metrics.jsonl cannot be read (a torn last line is fine), or None."""
    try:
        read_metrics(run_dir)
    except (OSError, ValueError) as e:
        return f"metrics.jsonl damaged ({e})"
    return None


def _params(run_dir: Path, summary: dict, config: Any) -> dict[str, str]:
    """What identifies a run's group: model/dataset/schedule plus its meaningful overrides."""
    params = {}
    for name in IDENTITY:
        section = config.get(name) if isinstance(config, dict) else None
        value = section.get("name") if isinstance(section, dict) else summary.get(name)
        params[name] = str(value)
    for item in _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).lstrip("+~").partition("=")
        if key in IGNORED_KEYS or is_result_neutral(key) or key in IDENTITY or key.startswith("hydra"):
            continue
        params[key] = value
    return params


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run below ``dirs``: dirs with a summary.json, or train jobs that never wrote one."""
    found: dict[Path, None] = {}
    for root in dirs:
        if not root.exists():
            raise ReportError(f"{root} does not exist")
        if not root.is_dir():
            raise ReportError(f"{root} is not a directory")
        candidates = [p.parent for p in root.rglob("summary.json")]
        candidates += [p.parent for p in root.rglob("train.log") if (p.parent / ".hydra").is_dir()]
        candidates = [c for c in candidates if not TRACKER_DIRS & set(c.relative_to(root).parts)]
        for run_dir in sorted(candidates, key=_natural):
            found.setdefault(run_dir.resolve(), None)
    if not found:
        raise ReportError(f"no runs (summary.json) found below {' '.join(map(str, dirs))}")
    runs = []
    for run_dir in found:
        summary = _read_summary(run_dir)
        config = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
        params = _params(run_dir, summary, config)
        runs.append(Run(run_dir, summary, params, damaged=_metrics_problem(run_dir),
                        paper=paper_figures(config, summary)))
    return runs


def group_runs(runs: list[Run]) -> list[Group]:
    """Group runs by their params; label each group by the params that differ between runs."""
    keys = {k for r in runs for k in r.params}
    varying = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    groups: dict[tuple, Group] = {}
    for run in runs:
        group = groups.get(run.key)
        if group is None:
            label = ",".join(f"{k}={v}" for k, v in run.params.items() if k in varying)
            group = groups[run.key] = Group(label or run.params["schedule"])
        group.runs.append(run)
    seen: dict[str, int] = {}
    for group in groups.values():  # labels must stay unique even if overrides were spelt alike
        seen[group.label] = seen.get(group.label, 0) + 1
        if seen[group.label] > 1:
            group.label += f" ({seen[group.label]})"
        for run in group.runs:
            run.label = group.label
    mark_pareto(list(groups.values()))
    return list(groups.values())


def headline(stats: dict) -> tuple[str, float | None]:
    """A group's quality, higher is better: ("acc", final accuracy), or for language models
    ("ppl", minus the final perplexity)."""
    if stats.get("final_ppl_mean") is not None:
        return "ppl", -stats["final_ppl_mean"]
    return "acc", stats["final_acc_mean"]


def mark_pareto(groups: list[Group], cost: Cost = GBITOPS) -> None:
    """A group is on the front when no other group of its kind (accuracy, or perplexity) is as
    good at no more cost (GBitOPs, or the report's --cost)."""
    points = {id(g): (kind, s[f"{cost.key}_mean"], q) for g in groups
              if (s := g.stats()).get(f"{cost.key}_mean") is not None
              and (kind := headline(s)[0]) and (q := headline(s)[1]) is not None}
    for g in groups:
        if id(g) not in points:
            continue
        kind, c, a = points[id(g)]
        g.pareto = not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a)
                           for k, (kind2, c2, a2) in points.items() if k != id(g) and kind2 == kind)


def _pm(mean: float | None, std: float | None, fmt: str, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:{fmt}} ± {(std or 0.0) * scale:{fmt}}"


def _ci(lo: float | None, hi: float | None, scale: float) -> str:
    return "-" if lo is None else f"[{lo * scale:.2f}, {hi * scale:.2f}]"


def markdown(rows: list[dict], runs: list[Run], cost: Cost = GBITOPS) -> str:
    """The table users read: accuracies in percent, mean ± sample std over seeds."""
    ppl = [s for s in LM_STATS if any(r[f"{s}_mean"] is not None for r in rows)]
    # accuracy columns unless every group is a language model (perplexity columns instead)
    acc = [s for s in ("final_acc", "best_acc") if not ppl or any(headline(r)[0] == "acc" for r in rows)]
    ci = "final_ppl" if ppl and not acc else "final_acc"
    head = ["group", "runs (ok/all)", *[s.replace("_acc", " acc %") for s in acc],
            *[s.replace("_", " ") for s in ppl], ci.replace("final_acc", "final acc %").replace("_", " ")
            + " 95% CI", "GBitOPs", "rel. cost"]
    extra = [c for c in extra_costs([r.summary for r in runs]) if any(f"{c.key}_mean" in row for row in rows)]
    head += [c.label for c in extra] + ["train time s", "Pareto"]
    scaling = [s for s in SCALING_STATS if any(r[f"{s}_mean"] is not None for r in rows)]
    head += [s.replace("_", " ") for s in scaling]
    papers = any(r.get("paper") for r in rows)
    if papers:
        head += ["paper", "measured", "measured 95% CI", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        bad = ", ".join(f"{r[s]} {s}" for s in (*NOT_COMPLETED, "other") if r[s])
        count = f"{r['completed']}/{r['runs']}" + (f" ({bad})" if bad else "")
        cells = [r["group"], count, *[_pm(r[f"{s}_mean"], r[f"{s}_std"], ".2f", 100) for s in acc],
                 *[_pm(r[f"{s}_mean"], r[f"{s}_std"], ".2f") for s in ppl],
                 _ci(r.get(f"{ci}_ci_lo"), r.get(f"{ci}_ci_hi"), 100 if ci == "final_acc" else 1),
                 _pm(r["gbitops_mean"], r["gbitops_std"], ".4g"),
                 _pm(r["relative_cost_mean"], r["relative_cost_std"], ".4f"),
                 *[_pm(r.get(f"{c.key}_mean"), r.get(f"{c.key}_std"), ".4g") for c in extra],
                 _pm(r["train_time_s_mean"], r["train_time_s_std"], ".1f"),
                 "*" if r["pareto"] else ""]
        cells += [_pm(r[f"{s}_mean"], r[f"{s}_std"], ".3g") for s in scaling]
        if papers:
            cells += [r["paper"] or "-", r["measured"] or "-", r.get("paper_ci") or "-",
                      r.get("verdict") or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    front = "final accuracy" + (" (language models: final perplexity, lower is better)" if ppl else "")
    lines += ["", f"mean ± {STD_NOTE}; 95% CI: {CI_NOTE}; "
                  f"* = on the Pareto front of {front} vs {cost.label}."]
    if papers:
        sources = sorted({r["paper_source"] for r in rows if r.get("paper")})
        lines += ["", "paper: gains the preset's paper reports (best accuracy in points or best "
                  "perplexity, cost in % of GBitOPs) over the named baseline; measured: the same "
                  "from this report's runs, with the 95% CI (Welch) of the measured accuracy "
                  "(perplexity) gain; verdict: consistent when the paper's gain lies in that CI, "
                  "below / above when the whole CI lies below / above it. Sources: " + "; ".join(sources)]
    bad_runs = [r for r in runs if r.status != "completed"]
    if bad_runs:
        lines += ["", f"runs that did not complete ({len(bad_runs)}):"]
        for r in bad_runs:
            error = str(r.summary.get("error") or "").strip().splitlines()
            at = f"step {r.summary.get('steps', '?')} of {r.summary.get('total_steps', '?')}"
            if not error and r.status == "diverged":
                error = [f"loss not finite by {at}"]
            if not error and r.status == "interrupted":
                error = [f"stopped at {at}; continue it with: cprec train resume={r.path}"]
            lines.append(f"- {r.status}: {r.path.name}" + (f": {error[-1]}" if error else ""))
    damaged = [r for r in runs if r.damaged]
    if damaged:
        lines += ["", f"runs with damaged files ({len(damaged)}; their summaries still count):"]
        lines += [f"- {r.path.name}: {r.damaged}" for r in damaged]
    return "\n".join(lines) + "\n"


def write_report(groups: list[Group], runs: list[Run], dirs: list[Path], out: Path,
                 plots: bool = True, cost: Cost = GBITOPS) -> str:
    """Write report.md/.csv/.json (and PNGs) into ``out``; return the markdown table. The
    Pareto front and the accuracy-vs-cost plot use ``cost`` (GBitOPs by default)."""
    mark_pareto(groups, cost)
    out.mkdir(parents=True, exist_ok=True)
    rows = [g.stats() for g in groups]
    params, figures = [g.runs[0].params for g in groups], [g.runs[0].paper for g in groups]
    labels = [precision_label(g.runs[0].summary) for g in groups]
    compare_with_papers(rows, params, labels, figures)
    add_statistics(rows, [g.runs for g in groups], baselines(params, labels, figures), figures)
    studies = [read_study(d, runs) for d in find_studies(dirs)]
    if plots:
        from cprec.report import plots as plotting  # matplotlib only when plotting

        failed = sum(r.status != "completed" for r in runs)
        lm = [r for r in rows if headline(r)[0] == "ppl"]
        if len(lm) < len(rows) or not lm:
            plotting.accuracy_vs_cost([r for r in rows if r not in lm], out / f"accuracy_vs_{cost.name}.png",
                                      not_completed=failed, cost=cost)
        if lm:
            plotting.accuracy_vs_cost(lm, out / f"perplexity_vs_{cost.name}.png", failed, metric="ppl",
                                      cost=cost)
        for stale in (out / "runs").glob("*.png"):  # plots of runs no longer reported
            stale.unlink()
        used: set[str] = set()
        for run in runs:
            if run.damaged:
                continue
            name = plotting.run_plot_name(run.label, run.summary.get("seed"), used, run.path)
            if plotting.run_curves(run.path, run.summary, run.label, out / "runs" / name):
                run.plot = f"runs/{name}"
            if "layer_bits_final" in run.summary:  # a learned precision (ldp, cpt_ldp)
                from cprec.report.ldp_plots import layer_bits_heatmap

                layer_bits_heatmap(run.path, run.summary, run.label,
                                   out / "runs" / name.replace(".png", "-layer_bits.png"))
            if "quant_telemetry" in run.summary:  # a scaled recipe's per-operand SQNR
                from cprec.report.format_plots import sqnr_heatmap

                sqnr_heatmap(run.summary, run.label, out / "runs" / name.replace(".png", "-sqnr.png"))
    text = "\n".join(filter(None, [markdown(rows, runs, cost), comparison_markdown(rows),
                                   *map(study_markdown, studies)]))
    write_text(out / "report.md", text)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "report.csv", table.getvalue())
    run_rows = [{"group": r.label, "path": str(r.path), "status": r.status,
                 "seed": r.summary.get("seed"), "error": r.summary.get("error"), "plot": r.plot,
                 "damaged": r.damaged,
                 **{k: r.summary.get(k) for k in (*STATS, *LM_STATS, *SCALING_STATS)}} for r in runs]
    report = {"dirs": [str(d) for d in dirs], "std": STD_NOTE, "ci": CI_NOTE, "groups": rows,
              "runs": run_rows, "studies": studies}
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return text
