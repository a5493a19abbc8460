"""``logger=mlflow``: a run as an MLflow run (the ``mlflow`` extra: pip install -e ".[mlflow]").

Every metrics record becomes MLflow metrics at its training step, the composed config the
run's params (flattened keys: ``optim.lr``), the summary's other numbers final metrics and
its status a tag, and the run directory's result files (summary.json, metrics.jsonl,
cost.json, train.log, .hydra/, report/) artifacts. The store is ``tracking.mlflow_uri``;
by default a local SQLite store, ``<output_root>/mlruns/mlflow.db`` with the artifacts in
``<output_root>/mlruns/artifacts`` (no server: ``mlflow ui --backend-store-uri
sqlite:///outputs/mlruns/mlflow.db`` shows it). The experiment is ``tracking.experiment``
(the shell fills it in from the preset or the sweep).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cprec.engine.tracking import STATUS, TrackerSink, artifact_files, flat_params, require_package

PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch
DB = "mlflow.db"


def tracking_uri(setting: str | None, output_root: str) -> str:
    """``tracking.mlflow_uri`` as a URI: a URI as given, a folder as a SQLite store in it."""
    if setting and ("://" in setting or setting.startswith("file:")):
        return str(setting)
    folder = Path(setting) if setting else Path(output_root) / "mlruns"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / DB).absolute()}"


def artifact_root(uri: str) -> str | None:
    """Where a SQLite store's runs keep their artifacts: beside the database (MLflow's own
    default would be ./mlruns under whatever directory the run started in)."""
    if uri.startswith("sqlite:///"):
        return str(Path(uri[len("sqlite:///"):]).parent / "artifacts")
    return None


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing (another job may create it first)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(uri))
    except Exception:  # created meanwhile by a parallel job of the same sweep
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class MlflowSink(TrackerSink):
    name = "mlflow"

    def __init__(self, cfg: Any, run_dir: Path, resumed_step: int) -> None:
        require_package("mlflow", "mlflow", cfg.logger)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        super().__init__(run_dir)
        saved = self.state.load()
        uri = saved.get("tracking_uri") or tracking_uri(cfg.tracking.mlflow_uri, cfg.output_root)
        self.client = MlflowClient(tracking_uri=uri)
        if saved.get("run_id"):  # a resumed run: the same MLflow run, from where it was
            self.run_id, self.last_step = saved["run_id"], int(saved.get("last_step", 0))
            self.client.update_run(self.run_id, status="RUNNING")
            return
        exp = experiment_id(self.client, cfg.tracking.experiment or "cprec", uri)
        run = self.client.create_run(exp, run_name=self.run_dir.name,
                                     tags={"cprec.run_dir": str(self.run_dir.absolute())})
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i:i + PARAMS_PER_CALL])
        self.state.save(run_id=self.run_id, tracking_uri=uri, experiment_id=exp, last_step=0)

    def _metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log(self, step: int, values: dict[str, float]) -> None:
        self._metrics(step, values)

    def end(self, summary: dict) -> None:
        final = self.final_values(summary)
        if final:
            self._metrics(int(summary.get("steps") or self.last_step), final)
        status = str(summary.get("status"))
        self.client.set_tag(self.run_id, "status", status)
        for path, folder in artifact_files(self.run_dir):
            self.client.log_artifact(self.run_id, str(path), folder or None)
        self.client.set_terminated(self.run_id, status=STATUS.get(status, "FAILED"))

    def abort(self) -> None:
        self.client.set_terminated(self.run_id, status="FAILED")
