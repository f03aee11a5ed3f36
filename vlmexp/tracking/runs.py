"""Reading finished runs back from MLflow: find a run by id or name, fetch its artifacts, rebuild its task."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlmexp.errors import VlmexpError

COMPARISON_TAG = "vlmexp.comparison"  # set on the runs ``vlmexp compare`` logs (left out of reports)


class RunNotFound(VlmexpError):
    """A run named on the command line is not in the tracking store."""


def tracking_client(tracking_uri: str | None = None):
    """A client of the store runs log to: ``tracking_uri``, else $MLFLOW_TRACKING_URI, else the default."""
    import mlflow

    from vlmexp.tracking.mlflow_tracker import default_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    return mlflow.MlflowClient(uri)


def experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise RunNotFound(f"no MLflow experiment named {name!r} in {client.tracking_uri} (experiments: {names})")
    return found.experiment_id


def find_run(client, ref: str, experiment: str | None = None):
    """The run whose id is ``ref``, else the newest finished run named ``ref`` (in ``experiment``, or
    in any experiment)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(ref)
        if experiment is None or run.info.experiment_id == experiment_id(client, experiment):
            return run
    except MlflowException:
        pass
    ids = [experiment_id(client, experiment)] if experiment else [e.experiment_id for e in client.search_experiments()]
    escaped = ref.replace("'", "\\'")
    found = client.search_runs(ids, filter_string=f"attributes.run_name = '{escaped}' and "
                                                  "attributes.status = 'FINISHED'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if not found:
        where = f"experiment {experiment!r}" if experiment else client.tracking_uri
        raise RunNotFound(f"{ref}: no MLflow run with this id, nor a finished run with this name, in {where}")
    return found[0]


def download(client, run, artifact: str, dst: Path) -> Path:
    """One artifact file of ``run`` into ``dst`` (one line naming the run when it has none)."""
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run.info.run_id, artifact, str(dst)))
    except (MlflowException, OSError):
        raise RunNotFound(f"run {run.info.run_name} ({run.info.run_id}) has no {artifact} artifact "
                          "(not an evaluation run, or its artifacts were not logged)") from None


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_task(client, run, dst: Path):
    """The run's task plugin, built from its logged ``resolved_config.yaml`` (its scoring settings)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(download(client, run, "resolved_config.yaml", dst))
    return instantiate(cfg.task, _recursive_=False)
