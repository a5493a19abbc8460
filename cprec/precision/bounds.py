"""Where a cyclic run's precision bounds come from: the PRT result, or the config."""

from __future__ import annotations

import json
from pathlib import Path

from cprec.config import ModelConfig, TrainConfig
from cprec.errors import CprecError
from cprec.paths import prt_result_path
from cprec.precision.ladder import Ladder, parse_ladder


class PrtResultError(CprecError):
    """A PRT result that is missing, corrupt or for another model/dataset."""


def model_id(model: ModelConfig) -> str:
    """The model as PRT results name it: its name, and model=torchvision's arch with it
    (``torchvision.resnet50``), so two torchvision models never share bounds."""
    return f"{model.name}.{model.arch}" if model.name == "torchvision" else model.name


def prt_command(cfg: TrainConfig, ladder: Ladder | None = None) -> str:
    arch = f" model.arch={cfg.model.arch}" if cfg.model.name == "torchvision" else ""
    rungs = f" prt.ladder=[{','.join(ladder.names)}] (with the run's quant=)" if ladder else ""
    return f"cprec prt model={cfg.model.name}{arch} dataset={cfg.dataset.name}{rungs}"


def read_prt_result(path: Path, model: str, dataset: str, command: str | None = None,
                    ladder: Ladder | None = None) -> tuple[int, int]:
    """(lower_bits, upper_bits) from a prt.json, checked against the run's model (its
    ``model_id``) and dataset; ``command`` re-runs the PRT (default: model= dataset=). A
    ladder of formats' run takes a result whose bounds are rungs of its ``ladder``."""
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
    if ladder is not None and ladder.formats:
        ends = (result.get("lower_format"), result.get("upper_format"))
        if not set(ends) <= set(ladder.rungs):
            raise PrtResultError(f"PRT result {path} found {ends[0]}..{ends[1]}, not both rungs "
                                 f"of schedule.ladder=[{','.join(ladder.names)}]; re-run: {rerun}")
    return lo, hi


def resolve_bounds(cfg: TrainConfig) -> tuple[int, int, str]:
    """(min_bits, max_bits, bounds_source) for a run, per ``schedule.bounds``.

    ``config``: the configured bits. ``prt``: the PRT result, required. ``auto``: the PRT
    result if one exists for this model and dataset, else the configured bits ("default").
    """
    s = cfg.schedule
    ladder = parse_ladder(s.ladder, "schedule.ladder") if s.kind != "fp32" else None
    lo, hi = (ladder.widths[0], ladder.widths[-1]) if ladder else (s.min_bits, s.max_bits)
    if s.kind in ("fp32", "static") or s.bounds == "config":
        return lo, hi, "config"
    model = model_id(cfg.model)
    formats = ladder is not None and ladder.formats
    path = prt_result_path(cfg.output_root, model, cfg.dataset.name, formats)
    command = prt_command(cfg, ladder if formats else None)
    if path.exists():
        return (*read_prt_result(path, model, cfg.dataset.name, command, ladder), f"prt:{path}")
    if s.bounds == "prt":
        raise PrtResultError(f"schedule.bounds=prt but no PRT result at {path}; run first: {command}")
    return lo, hi, "default"
