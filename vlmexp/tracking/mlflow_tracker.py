"""MLflow tracking: one run per job, artifacts beside the tracking store, sweeps under a parent run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from vlmexp.paths import source_root
from vlmexp.tracking.base import Tracker

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
MAX_PARAMS_PER_BATCH = 100


def default_tracking_uri() -> str:
    base = source_root() or Path.cwd()
    return f"sqlite:///{(base / 'mlflow.db').resolve()}"


def artifact_root_for(tracking_uri: str) -> str | None:
    """Where new experiments keep artifacts: a folder beside a SQLite file, inside a file store;
    None lets a tracking server decide."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db_path = Path(unquote(tracking_uri[len("sqlite:///"):]))
        return (db_path.parent / "mlartifacts").resolve().as_uri()
    if parsed.scheme in ("", "file"):
        store = Path(unquote(parsed.path if parsed.scheme else tracking_uri)).resolve()
        return store.as_uri()
    return None


class MlflowTracker(Tracker):
    def __init__(self, tracking_uri: str | None = None, experiment: str = "vlmexp"):
        import mlflow

        self._mlflow = mlflow
        # The environment variable wins, as MLflow users expect; else the config; else the default.
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.run_id = None

    def _experiment_id(self) -> str:
        client = self._mlflow.MlflowClient()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        root = artifact_root_for(self.tracking_uri)
        location = f"{root.rstrip('/')}/{self.experiment}" if root else None
        return client.create_experiment(self.experiment, artifact_location=location)

    def start(self, run_name: str, *, resume_run_id: str | None = None, sweep: str | None = None) -> str:
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.tracking_uri)
        experiment_id = self._experiment_id()
        if resume_run_id and self._resumable(resume_run_id):
            run = mlflow.start_run(run_id=resume_run_id)
            log.info("continuing interrupted MLflow run %s", resume_run_id)
        else:
            tags = {"vlmexp.sweep": sweep} if sweep else {}
            if sweep:
                tags["mlflow.parentRunId"] = self._sweep_parent(experiment_id, sweep)
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        return self.run_id

    def _resumable(self, run_id: str) -> bool:
        try:
            run = self._mlflow.MlflowClient().get_run(run_id)
        except Exception:
            return False
        return run.info.status != "FINISHED" and run.info.lifecycle_stage == "active"

    def _sweep_parent(self, experiment_id: str, sweep: str) -> str:
        """The parent run grouping a multirun's jobs: found by tag, created by the first job."""
        client = self._mlflow.MlflowClient()
        existing = client.search_runs([experiment_id], filter_string=f"tags.`vlmexp.sweep_parent` = '{sweep}'",
                                      max_results=1)
        if existing:
            return existing[0].info.run_id
        parent = client.create_run(experiment_id, run_name=f"sweep {Path(sweep).name}",
                                   tags={"vlmexp.sweep_parent": sweep, "vlmexp.sweep": sweep})
        client.set_terminated(parent.info.run_id, "FINISHED")
        return parent.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k[:250]: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()}
        existing = self._mlflow.get_run(self.run_id).data.params
        clean = {k: v for k, v in clean.items() if k not in existing}  # a resumed run keeps its params
        items = list(clean.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._mlflow.log_params(dict(items[i:i + MAX_PARAMS_PER_BATCH]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None}
        if finite:
            self._mlflow.log_metrics(finite, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        elif path.is_file():
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)
