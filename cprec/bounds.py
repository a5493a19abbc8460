"""Where a cyclic run's precision bounds come from: the PRT result, or the config."""

from __future__ import annotations

import json
from pathlib import Path

from cprec.config import TrainConfig
from cprec.errors import CprecError
from cprec.paths import prt_result_path


class PrtResultError(CprecError):
    """A PRT result that is missing, corrupt or for another model/dataset."""


def prt_command(cfg: TrainConfig) -> str:
    return f"cprec prt model={cfg.model.name} dataset={cfg.dataset.name}"


def read_prt_result(path: Path, model: str, dataset: str) -> tuple[int, int]:
    """(lower_bits, upper_bits) from a prt.json, checked against the run's model and dataset."""
    try:
        result = json.loads(Path(path).read_text())
        lo, hi = int(result["lower_bits"]), int(result["upper_bits"])
        owner = (result["model"], result["dataset"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrtResultError(f"PRT result {path} is unreadable ({type(e).__name__}); delete it "
                             f"and re-run: cprec prt model={model} dataset={dataset}") from None
    if owner != (model, dataset):
        raise PrtResultError(f"PRT result {path} is for model={owner[0]} dataset={owner[1]}, "
                             f"not model={model} dataset={dataset}; re-run: "
                             f"cprec prt model={model} dataset={dataset}")
    if not (1 <= lo <= hi <= 32):
        raise PrtResultError(f"PRT result {path} has invalid bounds {lo}..{hi}; re-run: "
                             f"cprec prt model={model} dataset={dataset}")
    return lo, hi


def resolve_bounds(cfg: TrainConfig) -> tuple[int, int, str]:
    """(min_bits, max_bits, bounds_source) for a run, per ``schedule.bounds``.

    ``config``: the configured bits. ``prt``: the PRT result, required. ``auto``: the PRT
    result if one exists for this model and dataset, else the configured bits ("default").
    """
    s = cfg.schedule
    if s.kind in ("fp32", "static") or s.bounds == "config":
        return s.min_bits, s.max_bits, "config"
    path = prt_result_path(cfg.output_root, cfg.model.name, cfg.dataset.name)
    if path.exists():
        lo, hi = read_prt_result(path, cfg.model.name, cfg.dataset.name)
        return lo, hi, f"prt:{path}"
    if s.bounds == "prt":
        raise PrtResultError(f"schedule.bounds=prt but no PRT result at {path}; run first: "
                             f"{prt_command(cfg)}")
    return s.min_bits, s.max_bits, "default"
