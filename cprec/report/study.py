"""The trials of a search (``hydra/sweeper=optuna``, e.g. ``experiment=search_cpt_digits``)
and their Pareto front, for `cprec report <study dir>`.

A study dir is a sweep dir holding the sweeper's ``optimization_results.yaml``; its jobs
are the trials (job number = trial number), the swept keys are ``hydra.sweeper.params`` (a
job's ``.hydra/hydra.yaml``) and those of the front's solutions, the objectives what
cprec/cli/train.py returns to the sweeper: (final accuracy, or final perplexity for
language models; GBitOPs), in the study's directions. A trial is on the front when no
other completed trial is at least as good in both objectives and better in one (Optuna's
``study.best_trials``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

STUDY_FILE = "optimization_results.yaml"


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def find_studies(dirs: list[Path]) -> list[Path]:
    """Every study dir at or below ``dirs``."""
    found: dict[Path, None] = {}
    for root in dirs:
        for path in sorted(Path(root).rglob(STUDY_FILE)):
            found.setdefault(path.parent.resolve(), None)
    return list(found)


def _objectives(summary: dict) -> tuple[str, float | None, float | None]:
    quality = "final_ppl" if summary.get("final_ppl") is not None else "final_acc"
    return quality, summary.get(quality), summary.get("gbitops")


def _dominates(a: tuple[float, float], b: tuple[float, float], signs: tuple[int, int]) -> bool:
    better_or_equal = all(s * x >= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x > s * y for x, y, s in zip(a, b, signs))


def _trial_number(path: Path) -> int | None:
    head = path.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def read_study(study_dir: Path, runs: list[Any]) -> dict:
    """The study's directions, swept keys and trials (the report's runs below ``study_dir``),
    each with its objective values and whether it is on the Pareto front."""
    job = next((p for p in sorted(study_dir.glob("*/.hydra/hydra.yaml"))), study_dir / "multirun.yaml")
    sweeper = ((_yaml(job) or {}).get("hydra") or {}).get("sweeper") or {}
    directions = sweeper.get("direction") or ["maximize", "minimize"]
    directions = [directions] if isinstance(directions, str) else [str(d) for d in directions]
    solutions = (_yaml(study_dir / STUDY_FILE) or {}).get("solutions") or []
    keys = list(dict.fromkeys([*(sweeper.get("params") or {}),
                               *[k for s in solutions for k in (s.get("params") or {})]]))
    trials = []
    for run in runs:
        if study_dir not in run.path.parents:
            continue
        quality, value, cost = _objectives(run.summary)
        trials.append({"trial": _trial_number(run.path), "path": str(run.path), "status": run.status,
                       "params": {k: run.params.get(k) for k in keys}, "metric": quality,
                       "value": value, "gbitops": cost, "pareto": False})
    trials.sort(key=lambda t: (t["trial"] is None, t["trial"] or 0))
    signs = tuple(1 if d == "maximize" else -1 for d in directions[:2])
    points = [(t, (t["value"], t["gbitops"])) for t in trials
              if t["status"] == "completed" and None not in (t["value"], t["gbitops"])]
    for t, p in points:
        t["pareto"] = len(signs) == 2 and not any(_dominates(q, p, signs) for _, q in points if q is not p)
    return {"dir": str(study_dir), "directions": directions, "params": keys, "trials": trials,
            "front": [t["trial"] for t in trials if t["pareto"]]}


def _cell(value: Any, metric: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if metric == "final_acc" else f"{value:.4g}"


def study_markdown(study: dict) -> str:
    """The trials table and the front, below the report's main table."""
    metric = next((t["metric"] for t in study["trials"]), "final_acc")
    shown = "final acc %" if metric == "final_acc" else "final ppl"
    head = ["trial", *study["params"], shown, "GBitOPs", "status", "Pareto"]
    lines = [f"## Study {study['dir']}", "",
             f"objectives: {study['directions'][0]} {shown.replace(' %', '')}"
             + (f", {study['directions'][1]} GBitOPs" if len(study["directions"]) > 1 else ""), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in study["trials"]:
        number = "-" if t["trial"] is None else str(t["trial"])
        cells = [number, *[str(t["params"][k]) for k in study["params"]],
                 _cell(t["value"], metric), _cell(t["gbitops"], "gbitops"), t["status"],
                 "*" if t["pareto"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    front = [t for t in study["trials"] if t["pareto"]]
    lines += ["", f"Pareto front ({len(front)} of {len(study['trials'])} trials): " + "; ".join(
        f"trial {t['trial']} ({', '.join(f'{k}={v}' for k, v in t['params'].items())}: "
        f"{_cell(t['value'], metric)}{' %' if metric == 'final_acc' else ''}, "
        f"{_cell(t['gbitops'], 'gbitops')} GBitOPs)" for t in front)]
    return "\n".join(lines) + "\n"
