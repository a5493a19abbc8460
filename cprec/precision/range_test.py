"""The precision range test (CPT, PAPERS.md section 1): find the bounds a cyclic run uses.

Train one fresh model while raising its forward precision one bit at a time from
``prt.start_bits``; at each level record the training accuracy and loss averaged over the
level's last ``prt.smoothing`` steps. The lower bound is the first precision whose accuracy
gain over the level below exceeds ``prt.threshold`` (training starts to converge); the
upper bound is ``prt.upper_bits``, or with ``upper_bits=auto`` the last precision before
the gain falls below the threshold again (raising precision stops helping). The test stops
as soon as both bounds are known, so it costs a small share of the run it serves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cprec.config import TrainConfig
from cprec.engine import runs
from cprec.engine.build import ModelParts, build_model_parts
from cprec.engine.step import TrainStep, grad_clip
from cprec.errors import ConfigError, CprecError
from cprec.paths import prt_result_path
from cprec.precision.bounds import model_id
from cprec.precision.ladder import parse_ladder
from cprec.quant import format_bits, layer_bits, set_precision

log = logging.getLogger("cprec")


def find_bounds(curve: list[dict], threshold: float, upper_bits: int | str) -> tuple[int | None, int | None]:
    """(lower, upper) from a curve of {"bits", "train_acc"} rows in rising bits order.

    Either is None while the curve is too short to decide it.
    """
    lower = upper = None
    for prev, row in zip(curve, curve[1:]):
        gain = row["train_acc"] - prev["train_acc"]
        if lower is None:
            if gain > threshold:
                lower = row["bits"]
        elif upper_bits == "auto" and gain <= threshold:
            upper = max(prev["bits"], lower)
            break
    if lower is not None and upper_bits != "auto":
        upper = max(int(upper_bits), lower)
    return lower, upper


def _train_level(parts: ModelParts, step: TrainStep, bits: int, bw: int, steps: int,
                 smoothing: int) -> dict:
    """Train ``steps`` steps at ``bits``; the level's row of the curve (last steps averaged)."""
    task = parts.task
    set_precision(parts.model, bits, bw)
    layers = layer_bits(parts.model)
    records = []
    for _ in range(steps):
        batch = task.next_batch()
        loss, out = step(batch)
        parts.ledger.add(layers, task.batch_samples(batch))
        window = task.new_window()
        window.add(loss, out, batch)
        records.append(window.record())
    last = records[-smoothing:]
    return {"bits": bits, "steps": steps,
            "train_acc": sum(r["train_acc"] for r in last) / len(last),
            "train_loss": sum(r["train_loss"] for r in last) / len(last)}


def run_prt(cfg: TrainConfig, out_dir: Path) -> dict:
    """Run the test, write prt.json (run dir and outputs/prt/<model>-<dataset>.json), a plot."""
    from cprec.report.plots import prt_curve

    p = cfg.prt
    ladder = parse_ladder(p.ladder, "prt.ladder")
    formats = ladder is not None and ladder.formats
    if cfg.quant.format == "scaled" and not formats:  # before any data loads
        raise ConfigError("quant.format", "scaled", "the precision range test varies fixed-point "
                          "bits unless it climbs a ladder of formats; give prt.ladder=[mxfp4,"
                          "mxfp6_e2m3,mxfp8] or use quant=fixed")
    parts = build_model_parts(cfg, p.batch_size, (ladder, None))
    step = TrainStep(parts.task, parts.model, parts.optimizer,
                     [c for c in [grad_clip(parts.model, cfg.optim.grad_clip)] if c is not None])
    bw = format_bits(cfg.quant)[1] if formats else cfg.schedule.bw_bits
    levels = ladder.widths if ladder else range(p.start_bits, p.max_bits + 1)
    curve: list[dict] = []
    lower = upper = None
    for bits in levels:
        row = _train_level(parts, step, bits, bw, p.steps_per_bits, p.smoothing)
        if formats:
            row["format"] = ladder.spec_name(bits)
        curve.append(row)
        log.info("PRT %5s: train_acc %.4f  train_loss %.4f", row.get("format", f"{bits} bits"),
                 row["train_acc"], row["train_loss"])
        lower, upper = find_bounds(curve, p.threshold, p.upper_bits)
        if ladder is not None and upper is not None:  # a configured upper bound: its rung
            upper = max([w for w in ladder.widths if w <= upper] + [lower])
        if lower is not None and upper is not None:
            break
    tried = f"[{','.join(ladder.names)}]" if ladder else f"{p.start_bits}..{p.max_bits}"
    if lower is None:
        raise CprecError(f"precision range test found no precision in {tried} "
                         f"whose accuracy gain exceeds prt.threshold={p.threshold}; lower "
                         f"prt.threshold or raise prt.steps_per_bits")
    source = "measured" if p.upper_bits == "auto" else "configured"
    if upper is None:  # auto upper bound still rising at max_bits
        upper, source = curve[-1]["bits"], "top tried"
    model = model_id(cfg.model)  # model=torchvision: with its arch (bounds.model_id)
    result = {"status": "completed", "model": model, "dataset": cfg.dataset.name,
              "lower_bits": lower, "upper_bits": upper, "upper_source": source, "threshold": p.threshold,
              "steps": sum(r["steps"] for r in curve), "gbitops": parts.ledger.gbitops,
              "bw_bits": bw, "batch_size": parts.task.batch_size, "seed": cfg.seed, "curve": curve}
    if formats:
        result.update(ladder=list(ladder.names), lower_format=ladder.spec_name(lower),
                      upper_format=ladder.spec_name(upper))
    runs.write_json(out_dir / "prt.json", result)
    on = f" over {tried}" if ladder else ""
    prt_curve(curve, lower, upper, out_dir / "prt.png", f"{model} on {cfg.dataset.name}{on}", source,
              (levels[0], levels[-1]))
    shared = prt_result_path(cfg.output_root, model, cfg.dataset.name, formats)
    runs.write_json(shared, result)
    result["path"] = str(shared)
    return result


def format_curve(result: dict) -> str:
    """The curve as a markdown table, bounds marked."""
    lines = ["| bits | train_acc | train_loss | gain |", "|---:|---:|---:|---:|"]
    prev = None
    for r in result["curve"]:
        gain = "" if prev is None else f"{r['train_acc'] - prev:+.4f}"
        level = f"{r['format']} ({r['bits']})" if "format" in r else r["bits"]
        mark = " <- lower" if r["bits"] == result["lower_bits"] else ""
        mark += " <- upper" if r["bits"] == result["upper_bits"] else ""
        lines.append(f"| {level} | {r['train_acc']:.4f} | {r['train_loss']:.4f} | {gain} |{mark}")
        prev = r["train_acc"]
    return "\n".join(lines)
