"""`cprec schedule`: the thin Hydra shell around ``cprec.precision.preview``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cprec.cli.shell import run_task, shell_main
from cprec.config import register_schemas
from cprec.paths import config_dir

register_schemas()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="preview")
def hydra_main(cfg: DictConfig) -> None:
    def task(out_dir: Path) -> dict:
        from cprec.precision.preview import preview_schedule
        from cprec.validate import to_train_config

        r = preview_schedule(to_train_config(cfg), out_dir)
        lo, hi = r["bits_bw_min"], r["bits_bw_max"]
        bw = lo if lo == hi else f"{lo}..{hi}"
        print(f"{r['schedule']}: {r['total_steps']} steps, forward {r['bits_fw_min']}..{r['bits_fw_max']} "
              f"bits (mean {r['mean_bits_fw']:.2f}), backward {bw} bits, bounds from "
              f"{r['bounds_source']}; relative cost {r['relative_cost']:.4f} of fp32 -> "
              f"{out_dir} ({r['png']}, {r['csv']}, schedule.json)")
        return {"status": "completed", **r}

    run_task(task, lambda message: None)


def main_cli(argv: list[str]) -> int:
    from cprec.precision.preview import check_preview

    return shell_main(argv, hydra_main, config_name="preview", job="schedule", check=check_preview)
