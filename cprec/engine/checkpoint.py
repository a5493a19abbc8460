"""A run's checkpoint: every part's own ``state_dict`` under one key, written atomically.

What goes in is listed once (``Checkpointing._stateful``); a part with state (a loss
scaler, learned precisions, a data position) adds itself there or travels inside the step
plugins' entry, and resume stays exact.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from cprec.config import check_same_run
from cprec.engine import runs
from cprec.errors import CprecError
from cprec.rng import rng_state, set_rng_state

log = logging.getLogger("cprec")
CHECKPOINT_VERSION = 2


class Checkpointing:
    """Save and restore of the Trainer (mixed into it: reads its parts, step and metrics)."""

    def _stateful(self) -> dict[str, Any]:
        """The parts whose own ``state_dict`` goes into the checkpoint, by key."""
        p = self.parts
        return {"model": p.model, "optimizer": p.optimizer, "lr_scheduler": p.lr_scheduler,
                "precision": p.precision, "qrng": p.qrng, "stream": p.task, "ledger": p.ledger,
                "plugins": self.train_step, "window": self.window, "loop": self.loop}

    def state_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "config": asdict(self.cfg), "rng": rng_state(),
                "metrics_lines": self.metrics.lines(),
                **{key: part.state_dict() for key, part in self._stateful().items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, part in self._stateful().items():
            part.load_state_dict(state[key])
        set_rng_state(state["rng"])
        self.metrics.truncate(state["metrics_lines"])

    def resume(self) -> None:
        """Continue from the run dir's newest readable checkpoint, if it is this run's."""
        found = runs.load_checkpoint(self.out_dir)
        if found is not None:
            state, path = found
            if state.get("version") != CHECKPOINT_VERSION:
                raise CprecError(f"{path} was written by an older cprec (checkpoint version "
                                 f"{state.get('version')}); finish that run with the version that "
                                 f"started it, or start over in a new run dir")
            check_same_run(state["config"], asdict(self.cfg), self.out_dir)
            self.load_state_dict(state)
            self.saved_step = self.loop.step
            log.info("resumed from %s at step %d", path, self.loop.step)

    def save_checkpoint(self) -> None:
        runs.save_checkpoint(self.out_dir / runs.CHECKPOINT, self.state_dict())
        self.saved_step = self.loop.step

    def write_failure(self, error: runs.RunWriteError) -> runs.RunWriteError:
        """The one line for a write that failed mid-run: what, the last good checkpoint, how
        to go on."""
        saved = getattr(self, "saved_step", None)
        where = (f"the last good checkpoint is at step {saved}" if saved is not None
                 else "no checkpoint was written yet")
        return runs.RunWriteError(f"{error}; {where}; free space, then resume with: "
                                  f"cprec train resume={self.out_dir}")
