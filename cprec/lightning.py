"""cprec's precision schedules in a Lightning run: ``PrecisionCallback`` (the ``lightning``
extra, ``pip install -e ".[lightning]"``).

At fit start the LightningModule's Conv2d/Linear layers become cprec's quantized layers; at
every training batch they get the schedule's bits for the trainer's global step, the cost
ledger is charged for the batch, and ``bits_fw``, ``bits_bw`` and ``gbitops`` go to the
module's logger. The ledger is ``callback.ledger`` (a `cprec.api.CostLedger`).
"""

from __future__ import annotations

from typing import Any

import torch

from cprec.api import CostLedger, Schedule, quantize, set_precision
from cprec.errors import CprecError

try:
    import lightning.pytorch as pl
except ImportError as e:  # one line, as every cprec error
    raise CprecError('cprec.lightning needs Lightning: pip install -e ".[lightning]" '
                     "(or pip install lightning)") from e


def _inputs(batch: Any) -> torch.Tensor:
    """The model input of a batch: the batch itself, or the first element of an (x, y) pair."""
    return batch[0] if isinstance(batch, list | tuple) else batch


class PrecisionCallback(pl.Callback):
    """Quantize the module at fit start, set its bits every batch, charge and log the cost.

    ``schedule`` is a `cprec.schedule` object covering the run's optimizer steps;
    ``quant`` the ``quant.*`` options of `cprec.quantize` (CPT's defaults if None).
    The ledger's MACs are measured on the module's ``example_input_array`` when it has one,
    else on the first sample of the first training batch.
    """

    def __init__(self, schedule: Schedule, quant: dict[str, Any] | None = None, seed: int = 0) -> None:
        if not isinstance(schedule, Schedule):
            raise CprecError(f"PrecisionCallback takes a cprec.schedule(...) object, not "
                             f"{type(schedule).__name__}")
        self.schedule, self.quant, self.seed = schedule, dict(quant or {}), seed
        self.ledger: CostLedger | None = None
        self.bits = (32, 32)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        quantize(pl_module, seed=self.seed, **self.quant)
        example = getattr(pl_module, "example_input_array", None)
        if example is not None:
            self.ledger = CostLedger(pl_module, example)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.estimated_stepping_batches
        if steps != float("inf") and steps > self.schedule.total_steps:
            raise CprecError(f"the trainer runs {int(steps)} optimizer steps but the schedule "
                             f"covers {self.schedule.total_steps}: make it with "
                             f"cprec.schedule({self.schedule.name!r}, {int(steps)}, ...)")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.ledger is None:
            self.ledger = CostLedger(pl_module, _inputs(batch)[:1])
        self.bits = self.schedule.bits(trainer.global_step)
        set_precision(pl_module, *self.bits)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        assert self.ledger is not None  # set at the batch's start
        self.ledger.add(len(_inputs(batch)))
        pl_module.log_dict({"bits_fw": float(self.bits[0]), "bits_bw": float(self.bits[1]),
                            "gbitops": self.ledger.gbitops}, on_step=True, on_epoch=False)
