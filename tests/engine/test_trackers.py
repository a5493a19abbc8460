"""logger=mlflow / logger=wandb / several sinks: what a run sends, read back through the
trackers' own formats; resume continues the same tracker run; a failing tracker only warns;
a missing extra is one line."""

from __future__ import annotations

import json
import struct
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cprec.engine.build import build_run
from cprec.engine.runs import read_metrics
from cprec.engine.tracking import TRACKERS_FILE
from cprec.engine.trainer import Trainer
from tests.helpers import FAST, read_summary, run_cli

SMALL = ["model=mlp", "trainer.steps=12", "trainer.eval_every=4", "trainer.progress=false",
         "schedule.cycles=3", "schedule.bounds=config"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One MLflow SQLite store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlruns")


def client(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def mlflow_run(run_dir: Path) -> str:
    return json.loads((run_dir / TRACKERS_FILE).read_text())["mlflow"]["run_id"]


def test_mlflow_gets_metrics_params_final_values_and_artifacts(compose, tmp_path, store) -> None:
    pytest.importorskip("mlflow")
    cfg = compose([*SMALL, "logger=mlflow", f"tracking.mlflow_uri={store}", "tracking.experiment=t1"])
    Trainer(build_run(cfg), tmp_path).run()
    c, run_id = client(store), mlflow_run(tmp_path)
    run = c.get_run(run_id)
    records = read_metrics(tmp_path)
    history = c.get_metric_history(run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["test_acc"]))
                                                    for r in records]
    assert run.data.params["model.name"] == "mlp" and run.data.params["optim.lr"] == "0.1"
    summary = read_summary(tmp_path)
    assert run.data.metrics["final_acc"] == pytest.approx(summary["final_acc"])
    assert run.data.metrics["relative_cost"] == pytest.approx(summary["relative_cost"])
    assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
    assert c.get_experiment(run.info.experiment_id).name == "t1"
    artifacts = {a.path for a in c.list_artifacts(run_id)}
    assert {"summary.json", "metrics.jsonl", "cost.json"} <= artifacts


def test_mlflow_resume_continues_the_same_run_without_duplicate_steps(compose, tmp_path, store) -> None:
    """The first part is cut back to its step-8 checkpoint after logging step 12 (a crash
    between an evaluation and the next checkpoint); the resume logs steps 12 and 16 once."""
    pytest.importorskip("mlflow")
    cfg = compose([*SMALL, "trainer.steps=16", "trainer.checkpoint_every=8", "logger=mlflow",
                   f"tracking.mlflow_uri={store}"])
    first = Trainer(build_run(cfg), tmp_path)
    first.parts.plan = replace(first.parts.plan, total_steps=12)
    first.run()
    (tmp_path / "summary.json").unlink()
    (tmp_path / "checkpoint.prev.pt").replace(tmp_path / "checkpoint.pt")  # back to step 8
    run_id = mlflow_run(tmp_path)
    Trainer(build_run(cfg), tmp_path).run()
    assert mlflow_run(tmp_path) == run_id
    steps = [m.step for m in client(store).get_metric_history(run_id, "test_acc")]
    assert steps == [4, 8, 12, 16] == [r["step"] for r in read_metrics(tmp_path)]
    assert client(store).get_run(run_id).info.status == "FINISHED"


def test_a_tracker_that_fails_mid_run_warns_once_and_training_goes_on(compose, tmp_path, store,
                                                                      monkeypatch, caplog) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    calls = []

    def unwritable(self, run_id, metrics=(), params=(), tags=()):
        calls.append(1)
        raise OSError(30, "Read-only file system")

    cfg = compose([*SMALL, "logger=[tensorboard,mlflow]", f"tracking.mlflow_uri={store}"])
    trainer = Trainer(build_run(cfg), tmp_path)
    monkeypatch.setattr(MlflowClient, "log_batch", unwritable)  # params went in at the start
    with caplog.at_level("WARNING", logger="cprec"):
        summary = trainer.run()
    warnings = [r for r in caplog.records if "logger=mlflow failed" in r.getMessage()]
    assert len(warnings) == 1 and len(calls) == 1 and "Read-only file system" in warnings[0].getMessage()
    assert summary["status"] == "completed"
    assert [r["step"] for r in read_metrics(tmp_path)] == [4, 8, 12]
    assert (tmp_path / "tensorboard").is_dir()  # the other sink went on


# ---- W&B offline ------------------------------------------------------------------------

BLOCK, HEADER = 32768, 7  # the .wandb file: a LevelDB-style log of protobuf Records


def wandb_records(path: Path) -> list:
    """The Records of an offline run's run-<id>.wandb file (W&B's own protobufs)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, pending, out = path.read_bytes(), HEADER, b"", []
    assert data[:4] == b":W&B"
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:
            pos += room
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def finished_records(path: Path, timeout: float = 30.0) -> list:
    """The file's records once W&B's service (a separate process, which writes after
    ``run.finish()`` has returned) has written the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def test_wandb_offline_run_holds_the_metrics_summary_and_files(compose, tmp_path, monkeypatch,
                                                               caplog) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose([*SMALL, "logger=wandb", "tracking.wandb_group=g1"])
    with caplog.at_level("WARNING", logger="cprec"):
        Trainer(build_run(cfg), tmp_path).run()
    assert not [r for r in caplog.records if "logger=wandb failed" in r.getMessage()]
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = finished_records(run_file)
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[items["_step"]] = items["test_acc"]
    assert history == {m["step"]: pytest.approx(m["test_acc"]) for m in read_metrics(tmp_path)}
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    saved = json.loads((tmp_path / TRACKERS_FILE).read_text())["wandb"]
    assert run.run_group == "g1" and run.run_id == saved["run_id"]
    summary = {i.key or ".".join(i.nested_key): i.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert json.loads(summary["final_acc"]) == pytest.approx(read_summary(tmp_path)["final_acc"])
    assert (run_file.parent / "files" / "summary.json").is_file()


# ---- the command line -------------------------------------------------------------------


def test_logger_takes_a_name_or_a_list(compose) -> None:
    from cprec.engine.loggers import logger_names

    assert logger_names(compose(["logger=tensorboard"]).logger) == ["tensorboard"]
    assert logger_names(compose(["logger=[tensorboard,mlflow]"]).logger) == ["tensorboard", "mlflow"]
    assert logger_names(compose([]).logger) == []


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_without_the_extra_the_run_ends_with_one_line_naming_it(tmp_path, extra) -> None:
    """The package is made unimportable in the subprocess (sitecustomize), not uninstalled."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{extra!r}] = None\n")
    env = {"PYTHONPATH": f"{site}:{Path(__file__).resolve().parents[2]}"}
    run = tmp_path / "run"
    out = run_cli(["train", *FAST, f"logger=[tensorboard,{extra}]", f"hydra.run.dir={run}"],
                  tmp_path, env=env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and f'pip install -e ".[{extra}]"' in lines[0], lines
    assert not run.exists()


def test_an_unknown_logger_lists_the_sinks(compose) -> None:
    from cprec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"choose one of \['none', 'tensorboard', 'mlflow', 'wandb'\]"):
        compose(["logger=[tensorboard,comet]"])
    assert sys.modules.get("cprec.engine.loggers") is not None
