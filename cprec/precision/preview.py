"""See a schedule before spending compute: its bits over the run and its relative cost."""

from __future__ import annotations

from pathlib import Path

from cprec.config import TrainConfig
from cprec.engine import runs

CSV, PNG = "schedule.csv", "schedule.png"  # beside schedule.json, which names them


def check_preview(cfg: TrainConfig):
    """The preview's checks (before `cprec schedule` runs, and in it): a schedule with bits to
    show, and the run's plan (build.plan_run), which it returns."""
    from cprec.engine.build import plan_run
    from cprec.errors import ConfigError
    from cprec.precision.schedules import LEARNED_KINDS

    if cfg.schedule.kind in LEARNED_KINDS:
        raise ConfigError("schedule", cfg.schedule.name, "its bits are learned per layer in "
                          "training, so there is nothing to preview; the run's report draws them")
    return plan_run(cfg)


def preview_schedule(cfg: TrainConfig, out_dir: Path) -> dict:
    """Write schedule.csv, schedule.png and schedule.json for the run ``cfg`` describes; no
    training.

    schedule.csv holds the bits of every training step (``step,bits_fw,bits_bw``, steps from
    0; on a ladder also ``format_fw,format_bw``, the rungs' names); schedule.json names it
    and the PNG, and is written last. The relative cost uses the
    model's MACs per layer (measured on a dummy input of the task's shape), so first/last
    full-precision layers count as they will in the run.
    """

    from cprec.cost import measure_macs
    from cprec.models import build_model
    from cprec.precision.ladder import steps_per_format
    from cprec.precision.schedules import relative_cost_of
    from cprec.quant import build_quantized, quant_layers
    from cprec.report.plots import schedule_bits
    from cprec.tasks.families import task_family

    plan = check_preview(cfg)
    schedule, total = plan.schedule, plan.total_steps
    family = task_family(cfg.dataset.name)
    info = family.shape(cfg.dataset)[0]
    model, _ = build_quantized(build_model(cfg.model, info), cfg.quant, cfg.seed)
    macs = measure_macs(model, family.dummy_input(info))
    rel = relative_cost_of(schedule, macs, set(quant_layers(model)))
    bits = [schedule.bits_at(t) for t in range(total)]
    result = {"schedule": cfg.schedule.name, "total_steps": total, **schedule.bit_ranges(),
              "bounds_source": plan.bounds_source, "relative_cost": rel,
              "mean_bits_fw": sum(b[0] for b in bits) / total,
              "mean_bits_bw": sum(b[1] for b in bits) / total, "csv": CSV, "png": PNG}
    names = labels = None
    if schedule.ladder:
        result["steps_per_format"] = steps_per_format(schedule, total)
        names = [(schedule.rung_name(fw), schedule.rung_name(bw, backward=True)) for fw, bw in bits]
        labels = schedule.rung_labels()
    rows = [f"{t},{fw},{bw}" + (f",{names[t][0]},{names[t][1]}" if names else "")
            for t, (fw, bw) in enumerate(bits)]
    header = "step,bits_fw,bits_bw" + (",format_fw,format_bw" if names else "")
    runs.write_text(out_dir / CSV, "\n".join([header, *rows]) + "\n")
    schedule_bits(bits, f"{result['schedule']}: relative cost {rel:.4f} of fp32", out_dir / PNG, labels)
    runs.write_json(out_dir / "schedule.json", result)
    return result
