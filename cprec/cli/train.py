"""`cprec train`: the thin Hydra shell around ``cprec.engine.trainer.run_train``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cprec.cli.shell import (
    is_multirun,
    output_dir,
    parallel_threads,
    run_task,
    shell_main,
    wants_multirun,
)
from cprec.cli.usage import wants_help
from cprec.config import register_schemas
from cprec.engine.distributed import launched_env
from cprec.errors import fail_line
from cprec.paths import arg_value, config_dir

register_schemas()


def fill_tracking(tracking: Any, output_root: str) -> None:
    """Default tracker names from where the job runs: the MLflow experiment is the preset's
    name (experiment=...), else the sweep dir under the output root for `-m` jobs, else
    "cprec"; the W&B group is the sweep dir (a sweep's jobs together), else the preset."""
    hydra_cfg = HydraConfig.get()
    preset = hydra_cfg.runtime.choices.get("experiment")
    sweep = None
    if is_multirun():
        sweep = Path(hydra_cfg.sweep.dir)
        try:
            sweep = sweep.absolute().relative_to(Path(output_root).absolute())
        except ValueError:
            pass
    if tracking.experiment is None:
        tracking.experiment = preset or (str(sweep) if sweep else "cprec")
    if tracking.wandb_group is None and (sweep or preset):
        tracking.wandb_group = str(sweep) if sweep else preset


def objectives(summary: dict | None) -> tuple[float, float] | None:
    """What a search (hydra/sweeper=optuna) scores a job by: (final accuracy, or perplexity
    for language models; GBitOPs). None for a job that did not complete: a failed trial."""
    if not summary or summary.get("status") != "completed":
        return None
    quality = summary.get("final_ppl", summary.get("final_acc"))
    return None if quality is None else (float(quality), float(summary["gbitops"]))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> tuple[float, float] | None:
    def task(out_dir: Path) -> dict:
        from cprec.validate import to_train_config  # torch: only once a job runs

        typed = to_train_config(cfg)  # validates before any work
        if typed.trainer.threads is None:
            typed.trainer.threads = parallel_threads()
        fill_tracking(typed.tracking, typed.output_root)
        if typed.trainer.devices > 1 or launched_env() is not None:
            from cprec.engine.distributed import run_data_parallel

            summary = run_data_parallel(typed, out_dir)
        else:
            from cprec.engine.trainer import run_train  # torch is imported only when training

            summary = run_train(typed, out_dir)
        # a sweep lists its jobs once, at the end; one rank of a launched group: rank 0 prints
        if not is_multirun() and (launched_env() or (0,))[0] == 0:
            from cprec.cli.console import result_block

            print(result_block(summary, out_dir), flush=True)
        return summary

    def failed(message: str) -> None:
        from cprec.engine.runs import SUMMARY, write_json

        if (launched_env() or (0,))[0] != 0:  # one rank of a group: rank 0 writes
            return

        write_json(output_dir() / SUMMARY, {
            "status": "failed", "error": message, "seed": cfg.get("seed"),
            "model": OmegaConf.select(cfg, "model.name"),
            "dataset": OmegaConf.select(cfg, "dataset.name"),
            "schedule": OmegaConf.select(cfg, "schedule.name"),
        })

    return objectives(run_task(task, failed))


def check_job(cfg) -> None:
    """What a run checks before it loads anything (pre-flight, every job of a sweep): the
    model fits the dataset's kind, and the plan (length, bounds, schedule, batch against the
    training set)."""
    from cprec.engine.build import plan_run
    from cprec.models import check_model_fits

    check_model_fits(cfg.model.name, cfg.dataset.name)
    plan_run(cfg)


def launched_rank_args(argv: list[str]) -> list[str]:
    """One rank that torchrun or a SLURM step started: every rank must write into the same
    run dir (a dated default would differ between ranks), and only rank 0 writes Hydra's
    ``.hydra/`` there (rank 0 also holds the run dir's lock: engine/distributed.py). Stop
    signals from the start are stop requests (a rank signalled while it starts ends
    "interrupted" with the others)."""
    from cprec.engine.trainer import catch_early_stops

    found = launched_env()
    if found is None or wants_multirun(argv) or wants_help(argv):
        return argv
    if not arg_value(argv, "hydra.run.dir") and not arg_value(argv, "resume"):
        fail_line(f"hydra.run.dir is required here: the {found[1]} processes the launcher started "
                  "must share one run dir; add hydra.run.dir=<folder>")
        sys.exit(2)
    catch_early_stops()
    return argv if found[0] == 0 else [*argv, "hydra.output_subdir=null"]


def main_cli(argv: list[str]) -> int:
    argv = launched_rank_args(argv)
    return shell_main(argv, hydra_main, config_name="train", job="train",
                      result_file="summary.json", resumable=True, check=check_job)
