"""What the experiment trackers (MLflow, W&B) share: the tracker run's id kept in the run
directory, no step logged twice, the config as flat params, the files sent as artifacts.

``<run dir>/trackers.json`` holds, per tracker, the id of its run and the last step it
logged: a resumed run (``cprec train resume=<run dir>``) continues that same tracker run and
skips the records it already has (a resume re-computes the steps after its checkpoint,
bit for bit, so nothing is lost by skipping them).
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cprec.engine import runs
from cprec.errors import ConfigError

TRACKERS_FILE = "trackers.json"
# folders where trackers keep copies of run files (W&B's offline runs, the default MLflow
# store): `cprec report` does not take the summary.json copies there for runs
TRACKER_DIRS = {"wandb", "mlruns"}
# run-dir files sent to a tracker as artifacts at the end (checkpoints are not: large, local)
ARTIFACT_SUFFIXES = (".json", ".jsonl", ".csv", ".md", ".png", ".log", ".yaml")
ARTIFACT_DIRS = (".hydra", "report")
# what a run's summary status means to a tracker that knows finished / failed / killed runs
STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "interrupted": "KILLED"}


def require_package(module: str, extra: str, logger: Any) -> Any:
    """``import module``, or the one-line ConfigError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError("logger", logger, f"the {module} package is not installed; pip install "
                          f"-e \".[{extra}]\" (or pip install {module})") from None


def numeric(record: dict) -> dict[str, float]:
    """The plain numbers of a record (no bools, lists or dicts)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def flat_params(cfg: Any, prefix: str = "") -> dict[str, str]:
    """The composed config as ``{"model.name": "mlp", ...}`` (values as strings)."""
    tree = asdict(cfg) if not isinstance(cfg, dict) else cfg
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def artifact_files(run_dir: Path) -> list[tuple[Path, str]]:
    """(file, folder inside the tracker's artifacts) for the run's result files and plots."""
    files = [(p, "") for p in sorted(Path(run_dir).iterdir())
             if p.is_file() and p.suffix in ARTIFACT_SUFFIXES and not p.name.startswith(".")]
    for folder in ARTIFACT_DIRS:
        files += [(p, str(p.parent.relative_to(run_dir)).lstrip(".")) for p in
                  sorted((Path(run_dir) / folder).rglob("*")) if p.is_file()]
    return files


class TrackerState:
    """One tracker's entry in ``<run dir>/trackers.json`` (written atomically)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self.path, self.name = Path(run_dir) / TRACKERS_FILE, name

    def _all(self) -> dict:
        try:
            state = runs.read_json(self.path)
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def load(self) -> dict:
        entry = self._all().get(self.name)
        return entry if isinstance(entry, dict) else {}

    def save(self, **entry: Any) -> None:
        state = self._all()
        state[self.name] = {**state.get(self.name, {}), **entry}
        runs.write_json(self.path, state)


class TrackerSink:
    """A metric sink for an experiment tracker: ``log(step, values)`` gets each record's numbers
    once per step (steps the tracker run already has are skipped), ``end(summary)`` the summary
    and artifacts, ``abort()`` marks a run that ended without one. Subclasses open their
    tracker run in ``__init__`` and set ``self.last_step`` from the saved state."""

    name = "tracker"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.state = Path(run_dir), TrackerState(run_dir, self.name)
        self.last_step, self.ended = 0, False
        # metric names records log (a resumed run's earlier records too): not final values
        self.logged_keys = {k for r in runs.read_metrics(run_dir) for k in numeric(r)}

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def end(self, summary: dict) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def write(self, record: dict) -> None:
        step = int(record["step"])
        values = numeric({k: v for k, v in record.items() if k != "step"})
        self.logged_keys.update(values)
        if step <= self.last_step:
            return
        self.log(step, values)
        self.last_step = step
        self.state.save(last_step=step)

    def finish(self, summary: dict) -> None:
        self.end(summary)
        self.ended = True

    def close(self) -> None:
        if not self.ended:
            self.ended = True
            self.abort()

    def final_values(self, summary: dict) -> dict[str, float]:
        """The summary's numbers a metrics record did not already log (final_acc, relative_cost ...)."""
        return {k: v for k, v in numeric(summary).items() if k not in self.logged_keys}
