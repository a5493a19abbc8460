"""`cprec train`: the thin Hydra shell around ``cprec.engine.run_train``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from cprec.config import register_schemas, to_train_config
from cprec.paths import config_dir
from cprec.shell import check_writable, finish_sweep, parallel_threads, pin_sweep_dir, run_task

register_schemas()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    def task(out_dir: Path) -> dict:
        typed = to_train_config(cfg)  # validates before any work
        if typed.trainer.threads is None:
            typed.trainer.threads = parallel_threads()
        from cprec.engine import run_train  # torch is imported only when training

        return run_train(typed, out_dir)

    def failed(message: str) -> None:
        from cprec.runs import SUMMARY, write_json
        from cprec.shell import output_dir

        write_json(output_dir() / SUMMARY, {
            "status": "failed", "error": message, "seed": cfg.get("seed"),
            "model": OmegaConf.select(cfg, "model.name"),
            "dataset": OmegaConf.select(cfg, "dataset.name"),
            "schedule": OmegaConf.select(cfg, "schedule.name"),
        })

    run_task(task, failed)


def resume_args(argv: list[str]) -> list[str]:
    """`resume=<run dir>`: re-run that dir's saved overrides inside it (exact resume)."""
    target = next((a.split("=", 1)[1] for a in argv if a.startswith("resume=")), None)
    if not target:
        return argv
    saved = Path(target) / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        from cprec.shell import fail_line

        fail_line(f"resume={target!r} is invalid: no run directory there ({saved} is missing)")
        sys.exit(2)
    old = [o for o in OmegaConf.load(saved) if not str(o).startswith(("hydra.", "resume="))]
    extra = [a for a in argv if not a.startswith("resume=")]
    return [*old, *extra, f"hydra.run.dir={target}", f"resume={target}"]


def main_cli(argv: list[str]) -> int:
    argv = resume_args(argv)
    argv, sweep = pin_sweep_dir(argv, "train")
    check_writable(argv)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()
    return finish_sweep(sweep)
