"""Where a cyclic run's precision bounds come from: the PRT result, or the config."""

from __future__ import annotations

import json
from pathlib import Path

from cprec.config import ModelConfig, TrainConfig
from cprec.errors import CprecError
from cprec.paths import prt_result_path


class PrtResultError(CprecError):
    """A PRT result that is missing, corrupt or for another model/dataset."""


def model_id(model: ModelConfig) -> str:
    """The model as PRT results name it: its name, and model=torchvision's arch with it
    (``torchvision.resnet50``), so two torchvision models never share bounds."""
    return f"{model.name}.{model.arch}" if model.name == "torchvision" else model.name


def prt_command(cfg: TrainConfig) -> str:
    arch = f" model.arch={cfg.model.arch}" if cfg.model.name == "torchvision" else ""
    return f"cprec prt model={cfg.model.name}{arch} dataset={cfg.dataset.name}"


def read_prt_result(path: Path, model: str, dataset: str, command: str | None = None) -> tuple[int, int]:
    """(lower_bits, upper_bits) from a prt.json, checked against the run's model (its
    ``model_id``) and dataset; ``command`` re-runs the PRT (default: model= dataset=)."""
    rerun = command or f"cprec prt model={model} dataset={dataset}"
    try:
        result = json.loads(Path(path).read_text())
        lo, hi = int(result["lower_bits"]), int(result["upper_bits"])
        owner = (result["model"], result["dataset"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrtResultError(f"PRT result {path} is unreadable ({type(e).__name__}); delete it "
                             f"and re-run: {rerun}") from None
    if owner != (model, dataset):
        raise PrtResultError(f"PRT result {path} is for model={owner[0]} dataset={owner[1]}, "
                             f"not model={model} dataset={dataset}; re-run: {rerun}")
    if not (1 <= lo <= hi <= 32):
        raise PrtResultError(f"PRT result {path} has invalid bounds {lo}..{hi}; re-run: {rerun}")
    return lo, hi


def resolve_bounds(cfg: TrainConfig) -> tuple[int, int, str]:
    """(min_bits, max_bits, bounds_source) for a run, per ``schedule.bounds``.

    ``config``: the configured bits. ``prt``: the PRT result, required. ``auto``: the PRT
    result if one exists for this model and dataset, else the configured bits ("default").
    """
    s = cfg.schedule
    if s.kind in ("fp32", "static") or s.bounds == "config":
        return s.min_bits, s.max_bits, "config"
    model = model_id(cfg.model)
    path = prt_result_path(cfg.output_root, model, cfg.dataset.name)
    if path.exists():
        lo, hi = read_prt_result(path, model, cfg.dataset.name, prt_command(cfg))
        return lo, hi, f"prt:{path}"
    if s.bounds == "prt":
        raise PrtResultError(f"schedule.bounds=prt but no PRT result at {path}; run first: "
                             f"{prt_command(cfg)}")
    return s.min_bits, s.max_bits, "default"
