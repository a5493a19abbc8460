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

import torch

from cprec import runs
from cprec.config import TrainConfig
from cprec.cost import CostLedger, measure_macs
from cprec.data import BatchStream, build_dataset
from cprec.engine import pick_device, seed_everything, sgd_step
from cprec.errors import CprecError
from cprec.models import build_model
from cprec.optim import build_optimizer
from cprec.paths import prt_result_path
from cprec.quant import build_quantized, layer_bits, set_precision

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


def run_prt(cfg: TrainConfig, out_dir: Path) -> dict:
    """Run the test, write prt.json (run dir and outputs/prt/<model>-<dataset>.json), a plot."""
    p = cfg.prt
    device = pick_device(cfg.trainer.device)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    seed_everything(cfg.seed)
    data = build_dataset(cfg.dataset).to(device)
    model, _ = build_quantized(build_model(cfg.model, data.info), cfg.quant, cfg.seed)
    model.to(device).train()
    ledger = CostLedger(measure_macs(model, data.x_train[:1]))
    optimizer = build_optimizer(model, cfg.optim)
    stream = BatchStream(data, p.batch_size, cfg.seed, device)
    bw = cfg.schedule.bw_bits
    curve: list[dict] = []
    lower = upper = None
    for bits in range(p.start_bits, p.max_bits + 1):
        set_precision(model, bits, bw)
        layer = layer_bits(model)
        accs, losses = [], []
        for _ in range(p.steps_per_bits):
            x, y = stream.next()
            loss, out = sgd_step(model, optimizer, x, y)
            ledger.add(layer, len(y))
            accs.append((out.argmax(1) == y).float().mean())
            losses.append(loss)
        k = p.smoothing
        row = {"bits": bits, "steps": p.steps_per_bits,
               "train_acc": float(torch.stack(accs[-k:]).mean()),
               "train_loss": float(torch.stack(losses[-k:]).mean())}
        curve.append(row)
        log.info("PRT %2d bits: train_acc %.4f  train_loss %.4f", bits, row["train_acc"],
                 row["train_loss"])
        lower, upper = find_bounds(curve, p.threshold, p.upper_bits)
        if lower is not None and upper is not None:
            break
    if lower is None:
        raise CprecError(f"precision range test found no precision in {p.start_bits}..{p.max_bits} "
                         f"whose accuracy gain exceeds prt.threshold={p.threshold}; lower "
                         f"prt.threshold or raise prt.steps_per_bits")
    if upper is None:  # auto upper bound still rising at max_bits
        upper = curve[-1]["bits"]
    result = {"status": "completed", "model": cfg.model.name, "dataset": cfg.dataset.name,
              "lower_bits": lower, "upper_bits": upper, "threshold": p.threshold,
              "steps": sum(r["steps"] for r in curve), "gbitops": ledger.gbitops,
              "bw_bits": bw, "batch_size": stream.batch_size, "seed": cfg.seed, "curve": curve}
    runs.write_json(out_dir / "prt.json", result)
    _plot(curve, lower, upper, out_dir / "prt.png", f"{cfg.model.name} on {cfg.dataset.name}")
    shared = prt_result_path(cfg.output_root, cfg.model.name, cfg.dataset.name)
    runs.write_json(shared, result)
    result["path"] = str(shared)
    return result


def format_curve(result: dict) -> str:
    """The curve as a markdown table, bounds marked."""
    lines = ["| bits | train_acc | train_loss | gain |", "|---:|---:|---:|---:|"]
    prev = None
    for r in result["curve"]:
        gain = "" if prev is None else f"{r['train_acc'] - prev:+.4f}"
        mark = " <- lower" if r["bits"] == result["lower_bits"] else ""
        mark += " <- upper" if r["bits"] == result["upper_bits"] else ""
        lines.append(f"| {r['bits']} | {r['train_acc']:.4f} | {r['train_loss']:.4f} | {gain} |{mark}")
        prev = r["train_acc"]
    return "\n".join(lines)


def _plot(curve: list[dict], lower: int, upper: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["bits"] for r in curve], [r["train_acc"] for r in curve], "o-")
    ax.axvline(lower, color="tab:green", ls="--", label=f"lower = {lower}")
    ax.axvline(upper, color="tab:red", ls="--", label=f"upper = {upper}")
    ax.set(xlabel="forward bits", ylabel="smoothed train accuracy", title=f"PRT: {title}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
