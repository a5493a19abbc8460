"""See a schedule before spending compute: its bits over the run and its relative cost."""

from __future__ import annotations

from pathlib import Path

from cprec import runs
from cprec.config import TrainConfig


def preview_schedule(cfg: TrainConfig, out_dir: Path) -> dict:
    """Write schedule.png and schedule.json for the run ``cfg`` describes; no training.

    The relative cost uses the model's MACs per layer (measured on a dummy input of the
    dataset's shape), so first/last full-precision layers count as they will in the run.
    """
    import torch

    from cprec.build import plan_run
    from cprec.cost import measure_macs
    from cprec.models import build_model
    from cprec.plots import schedule_bits
    from cprec.quant import build_quantized, quant_layers
    from cprec.schedules import relative_cost_of
    from cprec.tasks import task_shape

    plan = plan_run(cfg)
    schedule, total = plan.schedule, plan.total_steps
    info = task_shape(cfg.dataset)[0]
    model, _ = build_quantized(build_model(cfg.model, info), cfg.quant, cfg.seed)
    macs = measure_macs(model, torch.zeros(1, info.channels, info.size, info.size))
    rel = relative_cost_of(schedule, macs, set(quant_layers(model)))
    bits = [schedule.bits_at(t) for t in range(total)]
    result = {"schedule": cfg.schedule.name, "total_steps": total, "bits_fw_min": schedule.fw_range[0],
              "bits_fw_max": schedule.fw_range[1], "bits_bw": bits[0][1],
              "bounds_source": plan.bounds_source, "relative_cost": rel,
              "mean_bits_fw": sum(b[0] for b in bits) / total}
    runs.write_json(out_dir / "schedule.json", result)
    schedule_bits(bits, f"{result['schedule']}: relative cost {rel:.4f} of fp32",
                  out_dir / "schedule.png")
    result["png"] = str(out_dir / "schedule.png")
    return result
