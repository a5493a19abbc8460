"""`cprec prt`: the thin Hydra shell around ``cprec.precision.range_test.run_prt``."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from cprec.cli.shell import output_dir, run_task, shell_main
from cprec.config import register_schemas
from cprec.paths import config_dir

register_schemas()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="prt")
def hydra_main(cfg: DictConfig) -> None:
    def task(out_dir: Path) -> dict:
        from cprec.validate import to_train_config  # torch: only once a job runs

        typed = to_train_config(cfg)
        from cprec.precision.range_test import format_curve, run_prt

        result = run_prt(typed, out_dir)
        print(format_curve(result))
        ends = (f"{result['lower_format']}..{result['upper_format']}" if "lower_format" in result
                else f"{result['lower_bits']}..{result['upper_bits']} bits")
        print(f"bounds {ends} "
              f"({result['steps']} steps, {result['gbitops']:.4g} GBitOPs) -> {result['path']}")
        return result

    def failed(message: str) -> None:
        from cprec.engine.runs import write_json

        write_json(output_dir() / "prt.json", {"status": "failed", "error": message})

    run_task(task, failed)


def main_cli(argv: list[str]) -> int:
    return shell_main(argv, hydra_main, config_name="prt", job="prt", result_file="prt.json")
