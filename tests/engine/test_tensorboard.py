"""logger=tensorboard: metrics also as TensorBoard scalars; without the package, one line."""

from __future__ import annotations

import sys

import pytest

from cprec.engine.build import build_run
from cprec.engine.loggers import TENSORBOARD_DIR, TensorBoardSink
from cprec.engine.trainer import Trainer
from cprec.errors import ConfigError

SMALL = ["model=mlp", "trainer.steps=12", "trainer.eval_every=4", "trainer.progress=false",
         "schedule.cycles=3", "schedule.bounds=config", "logger=tensorboard"]


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_every_evaluation_record_becomes_scalars_at_its_step(compose, tmp_path) -> None:
    """test_acc, train_loss, gbitops ... one point per evaluation, equal to metrics.jsonl."""
    pytest.importorskip("tensorboard")
    from cprec.engine.runs import read_metrics

    Trainer(build_run(compose(SMALL)), tmp_path).run()
    tb = scalars(tmp_path / TENSORBOARD_DIR)
    records = read_metrics(tmp_path)
    assert {"test_acc", "test_loss", "train_loss", "train_acc", "gbitops", "bits_fw", "lr"} <= set(tb)
    assert tb["test_acc"] == [(r["step"], pytest.approx(r["test_acc"])) for r in records]


def test_resume_purges_the_events_after_the_checkpoint(tmp_path) -> None:
    """A sink opened at a resumed step drops the old events past it, so each step shows once."""
    pytest.importorskip("tensorboard")
    first = TensorBoardSink(None, tmp_path, resumed_step=0)
    for step in (4, 8, 12):
        first.write({"step": step, "test_acc": step / 100})
    first.close()
    second = TensorBoardSink(None, tmp_path, resumed_step=4)
    for step in (8, 12):
        second.write({"step": step, "test_acc": 1 + step / 100})
    second.close()
    points = scalars(tmp_path / TENSORBOARD_DIR)["test_acc"]
    assert points == [(4, pytest.approx(0.04)), (8, pytest.approx(1.08)), (12, pytest.approx(1.12))]


def test_without_tensorboard_installed_the_error_names_the_extra(tmp_path, monkeypatch) -> None:
    """A missing package is a one-line ConfigError that says what to install."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        TensorBoardSink(None, tmp_path, resumed_step=0)
