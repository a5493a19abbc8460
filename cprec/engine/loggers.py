"""Where evaluation records go besides metrics.jsonl (which is always written).

``logger=tensorboard`` also writes TensorBoard event files into the run directory
(``<run dir>/tensorboard``), what users of Lightning and similar tools open; it needs the
``tensorboard`` extra (``pip install -e ".[tensorboard]"``).
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Protocol

from cprec.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"


class MetricSink(Protocol):
    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Every numeric field of a record as a scalar at the record's step.

    On resume, events at or after the checkpoint's step are purged, as metrics.jsonl is
    cut back, so curves show each step once.
    """

    def __init__(self, run_dir: Path, resumed_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("logger", "tensorboard", "the tensorboard package is not installed; "
                              "pip install -e \".[tensorboard]\" (or pip install tensorboard)") from None
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR),
                                    purge_step=resumed_step + 1 if resumed_step else None)

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


SINKS = {"none": None, "tensorboard": TensorBoardSink}


def build_sinks(logger: str, run_dir: Path, resumed_step: int) -> list[MetricSink]:
    """The extra sinks ``logger`` (checked against SINKS by cprec.validate) asks for."""
    sink = SINKS[logger]
    return [] if sink is None else [sink(run_dir, resumed_step)]
