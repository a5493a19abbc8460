"""See a schedule before spending compute: its bits over the run and its relative cost."""

from __future__ import annotations

from pathlib import Path

from cprec import runs
from cprec.bounds import resolve_bounds
from cprec.config import TrainConfig
from cprec.data import dataset_shape


def preview_schedule(cfg: TrainConfig, out_dir: Path) -> dict:
    """Write schedule.png and schedule.json for the run ``cfg`` describes; no training.

    The relative cost uses the model's MACs per layer (measured on a dummy input of the
    dataset's shape), so first/last full-precision layers count as they will in the run.
    """
    import torch

    from cprec.cost import measure_macs
    from cprec.models import build_model
    from cprec.quant import build_quantized, format_bits, quant_layers
    from cprec.schedules import build_schedule, relative_cost_of

    info, n_train = dataset_shape(cfg.dataset)
    steps_per_epoch = max(n_train // min(cfg.trainer.batch_size, n_train), 1)
    total = cfg.trainer.steps or cfg.trainer.epochs * steps_per_epoch
    lo, hi, source = resolve_bounds(cfg)
    schedule = build_schedule(cfg.schedule, total, (lo, hi), format_bits(cfg.quant))
    model, _ = build_quantized(build_model(cfg.model, info), cfg.quant, cfg.seed)
    macs = measure_macs(model, torch.zeros(1, info.channels, info.size, info.size))
    rel = relative_cost_of(schedule, macs, set(quant_layers(model)))
    bits = [schedule.bits_at(t) for t in range(total)]
    result = {"schedule": cfg.schedule.name, "total_steps": total, "bits_fw_min": schedule.fw_range[0],
              "bits_fw_max": schedule.fw_range[1], "bits_bw": bits[0][1], "bounds_source": source,
              "relative_cost": rel, "mean_bits_fw": sum(b[0] for b in bits) / total}
    runs.write_json(out_dir / "schedule.json", result)
    _plot(bits, result, out_dir / "schedule.png")
    result["png"] = str(out_dir / "schedule.png")
    return result


def _plot(bits: list[tuple[int, int]], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = range(len(bits))
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.step(steps, [b[0] for b in bits], where="post", label="forward (weights, activations)")
    ax.step(steps, [b[1] for b in bits], where="post", ls="--", label="backward (errors)")
    ax.set(xlabel="training step", ylabel="bits", ylim=(0, max(max(max(b) for b in bits), 8) + 1),
           title=f"{result['schedule']}: relative cost {result['relative_cost']:.4f} of fp32")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
