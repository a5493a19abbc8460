"""What a finished command prints: a run's result block and a sweep's one line per job.

Pure formatting of the result files (summary.json, prt.json), so it is testable without
Hydra or torch; the shells decide when to print.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def shown_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter to read and
    to paste), else absolute."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _gbitops(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def quality(result: dict) -> str:
    """Final and best test quality: perplexity for language models (lower is better), else
    accuracy; '' when the run ended before its first evaluation."""
    for key, label in (("ppl", "ppl"), ("acc", "acc")):
        final, best = result.get(f"final_{key}"), result.get(f"best_{key}")
        if final is not None:
            text = f"final {label} {final:.4f}" if key == "acc" else f"final {label} {final:.2f}"
            if best is not None:
                text += f"  best {best:.4f}" if key == "acc" else f"  best {best:.2f}"
            return text
    return ""


def result_block(summary: dict, run_dir: Path) -> str:
    """The lines a finished `cprec train` ends with: the verdict, the bits it trained at
    (and where its bounds came from), any warnings, then where the run lies."""
    parts = [str(summary.get("status", "unknown")), quality(summary)]
    if summary.get("gbitops") is not None:
        cost = f"{_gbitops(summary['gbitops'])} GBitOPs"
        if summary.get("relative_cost") is not None:
            cost += f" ({summary['relative_cost']:.4f} of fp32)"
        parts.append(cost)
    if summary.get("train_time_s") is not None:
        parts.append(f"train {summary['train_time_s']:.1f} s")
    if summary.get("status") not in (None, "completed") and summary.get("error"):
        parts.append(str(summary["error"]))
    lines = ["  ".join(p for p in parts if p)]
    if summary.get("bits_fw_min") is not None:
        lines.append(f"bits     {bits_line(summary)}")
    lines += [f"warning  {w}" for w in summary.get("warnings") or ()]
    if len(threads := summary.get("threads") or []) > 1:  # automatic threads that changed
        lines.append(f"threads  {min(threads)}..{max(threads)}: shared the cores with other cprec "
                     "runs, so float sums may differ in the last digits from a run alone "
                     "(trainer.threads=N fixes the count)")
    return "\n".join([*lines, f"run dir  {shown_path(run_dir)}"])


def bits_line(summary: dict) -> str:
    """Forward and backward bits a run trained at, and where a cyclic run's bounds came from."""
    def span(lo: object, hi: object) -> str:
        return str(lo) if lo == hi else f"{lo}..{hi}"

    text = (f"forward {span(summary.get('bits_fw_min'), summary.get('bits_fw_max'))}, backward "
            f"{span(summary.get('bits_bw_min', summary.get('bits_bw')), summary.get('bits_bw'))}")
    steps = summary.get("steps_per_format")  # a ladder: the steps each rung trained
    if steps:
        text += "; " + ", ".join(f"{name} {n}" for name, n in steps["forward"].items()) + " steps"
    source = summary.get("bounds_source")
    return text + (f"  bounds from {source}" if source else "")


def _short(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def job_fields(result: dict | None) -> list[str]:
    """One sweep job's columns: status, then quality (or PRT bounds), GBitOPs, error."""
    if result is None:
        return ["missing"]
    fields = [str(result.get("status", "unknown"))]
    if "lower_bits" in result:  # a precision range test (prt.json)
        fields.append(f"bounds {result.get('lower_bits')}..{result.get('upper_bits')}")
    elif quality(result):
        fields.append(quality(result))
    if result.get("gbitops") is not None:
        fields.append(f"{_gbitops(result['gbitops'])} GBitOPs")
    if result.get("status") != "completed" and result.get("error"):
        fields.append(" ".join(str(result["error"]).split()))  # the whole reason, on one line
    return fields


def read_result(path: Path) -> dict | None:
    """A job's result file, or None when it is missing or unreadable (a killed job)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job directories (those Hydra started), in job-number order."""
    def number(p: Path) -> tuple[int, str]:
        head = p.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else 1 << 30, p.name)

    return sorted((p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()), key=number)


def _job_overrides(job_dir: Path) -> list[str]:
    """The overrides Hydra recorded for a job (its .hydra/overrides.yaml), [] if unreadable."""
    import yaml

    try:
        saved = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in saved] if isinstance(saved, list) else []


def job_labels(dirs: list[Path]) -> list[str]:
    """Short names for a sweep's jobs: the job number and the overrides that differ between
    jobs (the directory names repeat every shared override and get long)."""
    overrides = [_job_overrides(d) for d in dirs]
    shared = set.intersection(*map(set, overrides)) if dirs else set()
    labels = []
    for d, mine in zip(dirs, overrides):
        varying = [o for o in mine if o not in shared and not o.startswith("hydra.")]
        head = d.name.split("_", 1)[0]
        labels.append(" ".join([head, *varying]) if mine and head.isdigit() else d.name)
    return labels


def sweep_table(rows: Iterable[tuple[str, list[str]]]) -> list[str]:
    """Rows of (job label, fields), the label column padded so the fields line up."""
    rows = [(_short(name, 60), fields) for name, fields in rows]
    width = max((len(name) for name, _ in rows), default=0)
    status = max((len(fields[0]) for _, fields in rows if fields), default=0)
    lines = []
    for name, fields in rows:
        cells = [f"{name:<{width}}", *([f"{fields[0]:<{status}}", *fields[1:]] if fields else [])]
        lines.append("  ".join(cells).rstrip())
    return lines


def sweep_summary(sweep_dir: Path, result_file: str, next_command: str | None) -> str:
    """The lines a finished sweep ends with: one per job, then the command to read it."""
    dirs = job_dirs(sweep_dir)
    results = [job_fields(read_result(d / result_file)) for d in dirs]
    lines = [f"sweep {shown_path(sweep_dir)}: {len(dirs)} job(s)",
             *sweep_table(zip(job_labels(dirs), results))]
    if next_command:
        lines.append(f"next: {next_command}")
    return "\n".join(lines)
