"""Where evaluation records go besides metrics.jsonl (which is always written).

``logger=tensorboard`` also writes TensorBoard event files into the run directory
(``<run dir>/tensorboard``), what users of Lightning and similar tools open; it needs the
``tensorboard`` extra (``pip install -e ".[tensorboard]"``). ``logger=mlflow`` and
``logger=wandb`` send the run to an experiment tracker (mlflow_sink.py, wandb_sink.py;
settings under ``tracking.*``). Several at once: ``logger=[tensorboard,mlflow]``.

A sink that fails mid-run (a store that cannot be written, a lost server) is dropped with
one warning and the training goes on; metrics.jsonl still holds every record.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cprec.engine.mlflow_sink import MlflowSink
from cprec.engine.tracking import require_package
from cprec.engine.wandb_sink import WandbSink
from cprec.errors import ConfigError

log = logging.getLogger("cprec")

TENSORBOARD_DIR = "tensorboard"


class MetricSink(Protocol):
    def write(self, record: dict) -> None: ...

    def finish(self, summary: dict) -> None: ...  # the run's summary.json, once written

    def close(self) -> None: ...


class TensorBoardSink:
    """Every numeric field of a record as a scalar at the record's step.

    On resume, events at or after the checkpoint's step are purged, as metrics.jsonl is
    cut back, so curves show each step once.
    """

    def __init__(self, cfg: Any, run_dir: Path, resumed_step: int) -> None:
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

    def finish(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        self.writer.close()


SINKS: dict[str, Callable[..., MetricSink] | None] = {
    "none": None, "tensorboard": TensorBoardSink, "mlflow": MlflowSink, "wandb": WandbSink}
# the package each sink needs and the extra that installs it
PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb")}


def logger_names(logger: Any) -> list[str]:
    """``logger`` (a name, or a list of names) as the list of sinks it asks for, "none" left out."""
    names = [logger] if isinstance(logger, str) else list(logger or [])
    return [str(n) for n in dict.fromkeys(names) if n != "none"]


def check_loggers(logger: Any) -> None:
    """Every name a known sink whose package is installed (one line naming the extra if not)."""
    if not isinstance(logger, str | list | tuple):
        raise ConfigError("logger", logger, f"a name or a list of names from {list(SINKS)}")
    for name in [logger] if isinstance(logger, str) else logger:
        if name not in SINKS:
            raise ConfigError("logger", logger, f"choose one of {list(SINKS)}, or a list of them "
                                                "(logger=[tensorboard,mlflow])")
    for name in logger_names(logger):
        require_package(*PACKAGES[name], logger)


class Guarded:
    """A sink whose failures cost one warning, not the run: after the first error it is dropped."""

    def __init__(self, name: str, sink: MetricSink) -> None:
        self.name, self.sink = name, sink

    def _call(self, method: str, *args: Any) -> None:
        if self.sink is None:
            return
        try:
            getattr(self.sink, method)(*args)
        except Exception as e:
            failed(self.name, e)
            sink, self.sink = self.sink, None
            try:
                sink.close()
            except Exception:
                pass

    def write(self, record: dict) -> None:
        self._call("write", record)

    def finish(self, summary: dict) -> None:
        self._call("finish", summary)

    def close(self) -> None:
        self._call("close")


def failed(name: str, error: Exception) -> None:
    log.warning("logger=%s failed (%s: %s); it logs nothing more in this run, the training goes on "
                "and metrics.jsonl keeps every record", name, type(error).__name__, error)


def build_sinks(cfg: Any, run_dir: Path, resumed_step: int) -> list[MetricSink]:
    """The extra sinks ``cfg.logger`` (checked by cprec.validate) asks for, each guarded. A
    missing package is the user's ConfigError; a tracker that cannot start only warns."""
    sinks: list[MetricSink] = []
    for name in logger_names(cfg.logger):
        make = SINKS[name]
        assert make is not None
        try:
            sinks.append(Guarded(name, make(cfg, run_dir, resumed_step)))
        except ConfigError:
            raise
        except Exception as e:
            failed(name, e)
    return sinks
