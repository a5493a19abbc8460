"""``logger=wandb``: a run as a Weights & Biases run (the ``wandb`` extra: pip install -e ".[wandb]").

Offline by default: ``tracking.wandb_mode`` (null = ``$WANDB_MODE`` if set, else offline)
writes the run under ``<run dir>/wandb/offline-run-*``; ``wandb sync <that dir>`` uploads it
later. Every metrics record is logged at its training step, the composed config is the run's
config, the summary's numbers and status its summary, and the run directory's result files
are copied into the W&B run's files (uploaded with it). Project, entity and group come from
``tracking.wandb_project`` (null = "cprec"), ``tracking.wandb_entity`` and
``tracking.wandb_group`` (the shell fills in the sweep dir for `-m` jobs, so a sweep's runs
are one group).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cprec.engine.tracking import TrackerSink, artifact_files, require_package

WANDB_DIR = "wandb"


def wandb_mode(setting: str | None) -> str:
    return setting or os.environ.get("WANDB_MODE") or "offline"


class WandbSink(TrackerSink):
    name = "wandb"

    def __init__(self, cfg: Any, run_dir: Path, resumed_step: int) -> None:
        wandb = require_package("wandb", "wandb", cfg.logger)
        super().__init__(run_dir)
        saved, t = self.state.load(), cfg.tracking
        run_id = saved.get("run_id") or uuid.uuid4().hex[:12]
        self.last_step = int(saved.get("last_step", 0))
        self.run = wandb.init(
            project=t.wandb_project or "cprec", entity=t.wandb_entity,
            group=t.wandb_group or t.experiment, name=self.run_dir.name, dir=str(self.run_dir),
            id=run_id, resume="allow", mode=wandb_mode(t.wandb_mode), config=asdict(cfg),
            reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        if not saved.get("run_id"):
            self.state.save(run_id=run_id, mode=wandb_mode(t.wandb_mode), last_step=0)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def end(self, summary: dict) -> None:
        self.run.summary.update({**self.final_values(summary), "status": str(summary.get("status"))})
        files = Path(self.run.dir)  # W&B uploads what lies here with the run (wandb sync, offline)
        for path, folder in artifact_files(self.run_dir):
            (files / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, files / folder / path.name)
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)

    def abort(self) -> None:
        self.run.finish(exit_code=1)
