"""MLflow tracking: one run per job, artifacts beside the tracking store, sweeps under a parent run.

Records (params, metrics, tags, artifacts, the run's end) are sent by a background thread, so
training and evaluation never wait on the tracking store. While it does not answer they are kept and
retried; what is still unsent when the run ends is saved in the run's work dir and sent by the next
run of the same command, which continues the same MLflow run. A continued run (or one whose server
went away for a while) asks the server which steps of a metric it holds and logs each step once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from vlmexp.atomic import write_text_atomic
from vlmexp.errors import TrackingError
from vlmexp.paths import source_root
from vlmexp.tracking.base import Tracker
from vlmexp.tracking.sqlite_store import prepare_sqlite_store

log = logging.getLogger(__name__)

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
MAX_PARAMS_PER_BATCH = 100  # and on the params (or tags) of one log_batch call
MAX_METRICS_PER_BATCH = 1000
CLAIM_TAG, CLAIM_FILE = "vlmexp.run_claim", "mlflow_run_claim"  # see _orphan
PARENT_FILE = "mlflow_parent_run_id"  # in a sweep's folder: the id of the sweep's parent run
PENDING_FILE = "mlflow_pending.jsonl"  # in the run's work dir: what a run could not send
PROBE_TRIES, PROBE_TIMEOUT_S = 2, 3.0
RETRY_MAX_S = 10.0  # the longest pause between two tries while the server does not answer
SYSTEM_METRICS_STOP_S = 5.0  # the longest the end of a run waits for the system metrics monitor
NOTE_TAG = "mlflow.note.content"  # the description the UI shows for an experiment (or a run)


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


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _transient(exc: BaseException) -> bool:
    """A failure that may pass (no answer, a timeout, a server error), unlike a refused record."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, requests.RequestException):
        return True
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return False


def _reason(exc: BaseException) -> str:
    """The gist of a connection error ('Connection refused'), not urllib3's paragraph."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text.lower() or "timeout" in type(exc).__name__.lower():
        return "no answer in time"
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def _unsent(ops: list) -> str:
    metrics = sum(len(payload) for kind, payload in ops if kind == "metrics")
    other = sum(1 for kind, _ in ops if kind not in ("metrics", "end"))
    parts = [f"{metrics} metric values"] if metrics else []
    parts += [f"{other} other records (params, tags, artifacts)"] if other else []
    return " and ".join(parts) + " are" if parts else "the run's end is"


class MlflowTracker(Tracker):
    #: How long the end of a run waits for a server that stopped answering before giving up.
    end_grace_s: float = 10.0

    def __init__(self, tracking_uri: str | None = None, experiment: str = "vlmexp", system_metrics: bool = True,
                 system_metrics_interval_s: float = 2.0, register_model: str | None = None):
        import mlflow

        self._mlflow = mlflow
        # The environment variable wins, as MLflow users expect; else the config; else the default.
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.system_metrics, self.system_metrics_interval_s = system_metrics, system_metrics_interval_s
        self.register_model = register_model  # the model registry's name for the checkpoint log_model logs
        self.run_id = self.experiment_id = None
        self._monitor = None  # MLflow's system metrics monitor, while the run is open
        self._remote = urlparse(self.tracking_uri).scheme in ("http", "https")
        if self._remote:  # this tracker retries by itself: one request never waits for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars amid the run's output
        self._queue: deque[tuple[str, Any]] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stopped = False
        self._down_since: float | None = None  # since when the server has not answered
        self._error = ""
        self._doubt = False  # the server may hold metric steps this process does not know of
        self._known: dict[str, dict[int, float]] = {}  # metric -> step -> the (newest) value the server holds
        self._state_dir: Path | None = None

    # -- start ----------------------------------------------------------------------------------
    def check(self) -> None:
        if not self._remote:
            prepare_sqlite_store(self.tracking_uri)
            return
        import requests

        reason = ""
        for attempt in range(PROBE_TRIES):
            try:
                requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S)
                return
            except requests.RequestException as exc:
                reason = _reason(exc)
                if attempt + 1 < PROBE_TRIES:
                    time.sleep(1)
        raise TrackingError(f"the MLflow server at {self.tracking_uri} does not answer ({reason}): start it, or "
                            "point MLFLOW_TRACKING_URI at a store that works (logger=none logs nothing)")

    def start(self, run_name: str, *, resume_run_id: str | None = None, sweep: str | None = None,
              state_dir: Path | None = None) -> str:
        from mlflow.tracking.context.registry import resolve_tags

        self._mlflow.set_tracking_uri(self.tracking_uri)
        self._client = client = self._mlflow.MlflowClient(self.tracking_uri)
        try:
            experiment_id = self._experiment_id()
            resumed = bool(resume_run_id and self._resumable(resume_run_id))
            if not resumed and resume_run_id is None and state_dir is not None:
                resume_run_id = self._orphan(experiment_id, state_dir)
                resumed = resume_run_id is not None
            if resumed:
                client.update_run(resume_run_id, status="RUNNING")
                self.run_id, self._doubt = resume_run_id, True
                log.info("continuing interrupted MLflow run %s", resume_run_id)
            else:
                tags = {"vlmexp.sweep": sweep} if sweep else {}
                if state_dir is not None:  # set at creation, so a run killed before it noted its id is found
                    tags[CLAIM_TAG] = self._claim(state_dir)
                parent = self._sweep_parent(sweep) if sweep else None
                if parent:
                    tags["mlflow.parentRunId"] = parent
                run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(tags))
                self.run_id = run.info.run_id
            self.experiment_id = experiment_id
        except Exception as exc:
            if _transient(exc):
                raise TrackingError(f"the MLflow server at {self.tracking_uri} stopped answering "
                                    f"({_reason(exc)})") from None
            raise
        self._state_dir = state_dir
        self._load_pending(resumed)
        self._worker = threading.Thread(target=self._work, name="mlflow-sender", daemon=True)
        self._worker.start()
        if self.system_metrics:
            self._start_system_metrics(resumed)
        return self.run_id

    def _start_system_metrics(self, resumed: bool) -> None:
        """MLflow's monitor (CPU, memory, disk, network, GPU: ``system/...`` metrics), sampled every
        ``system_metrics_interval_s``. It logs from its own thread, best effort: a server that stops
        answering stops it (the sender's warning tells of the outage), and the run goes on."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Quiet: its start and stop lines, and its paragraph when the server goes away (the sender's one
        # warning says so; the monitor then stops for the rest of the run).
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
        try:
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_metrics_interval_s,
                                                 resume_logging=resumed, tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as exc:  # psutil missing, a store that refuses: the run goes on without them
            log.warning("system metrics are off for this run: %s", _reason(exc))
            self._monitor = None

    def _stop_system_metrics(self) -> None:
        """Stop the monitor; its last samples are sent unless the server does not answer in time."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        stopper = threading.Thread(target=monitor.finish, name="mlflow-system-metrics-stop", daemon=True)
        stopper.start()
        stopper.join(SYSTEM_METRICS_STOP_S)

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        root = artifact_root_for(self.tracking_uri)
        location = f"{root.rstrip('/')}/{self.experiment}" if root else None
        return self._client.create_experiment(self.experiment, artifact_location=location)

    def _orphan(self, experiment_id: str, state_dir: Path) -> str | None:
        """The RUNNING run this work dir claimed before a kill stopped it from noting the run's id
        (the token in ``CLAIM_FILE`` is unique to this work dir and attempt: ``resume=false`` removes
        it, and another machine's run never holds it)."""
        claim = state_dir / CLAIM_FILE
        token = claim.read_text().strip() if claim.is_file() else ""
        if not token.isalnum():
            return None
        found = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{CLAIM_TAG}` = '{token}' and attributes.status = 'RUNNING'",
            max_results=1)
        return found[0].info.run_id if found else None

    @staticmethod
    def _claim(state_dir: Path) -> str:
        """A new token, written to the work dir before the run it tags is created."""
        import uuid

        token = uuid.uuid4().hex
        write_text_atomic(state_dir / CLAIM_FILE, token)
        return token

    def _resumable(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException as exc:
            if _transient(exc):
                raise
            return False
        return run.info.status != "FINISHED" and run.info.lifecycle_stage == "active"

    def _sweep_parent(self, sweep: str) -> str | None:
        """The parent run the sweep's callback made before any job started (its id is in the sweep
        folder, which every launcher's jobs see); None when the sweep ran without the callback."""
        path = Path(sweep) / PARENT_FILE
        if path.is_file():
            return path.read_text().strip()
        log.warning("%s: no sweep parent run (hydra.callbacks.sweep is not configured); this job's run stands "
                    "alone", path)
        return None

    # -- sweeps: the parent run, made before the first job and summarised after the last --------
    def open_sweep(self, sweep_dir: Path, name: str, params: dict[str, str] | None = None) -> str:
        from mlflow.entities import Param

        self.check()
        self._client = client = self._mlflow.MlflowClient(self.tracking_uri)
        parent = client.create_run(self._experiment_id(), run_name=name,
                                   tags={"vlmexp.sweep_parent": str(sweep_dir), "vlmexp.sweep": str(sweep_dir)})
        items = [Param(k[:250], str(v)[:MAX_PARAM_VALUE]) for k, v in (params or {}).items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            client.log_batch(parent.info.run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])
        write_text_atomic(Path(sweep_dir) / PARENT_FILE, parent.info.run_id)
        return parent.info.run_id

    def close_sweep(self, sweep_dir: Path, metric: str | None, direction: str, complete: bool = True) -> dict | None:
        from vlmexp.tracking.sweep_summary import summarise

        path = Path(sweep_dir) / PARENT_FILE
        if not path.is_file():
            return None
        client = self._mlflow.MlflowClient(self.tracking_uri)
        return summarise(client, path.read_text().strip(), Path(sweep_dir), metric, direction, complete)

    # -- records: queued here, sent by the worker -----------------------------------------------
    def _put(self, kind: str, payload: Any) -> None:
        with self._cond:
            self._queue.append((kind, payload))
            self._cond.notify_all()

    def log_params(self, params: dict[str, Any]) -> None:
        self._put("params", {k[:250]: str(v)[:MAX_PARAM_VALUE] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        points = [[k, float(v), now, step] for k, v in metrics.items() if v is not None]
        if points:
            self._put("metrics", points)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put("tags", {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put("artifact", [str(Path(path).resolve()), artifact_path])

    def log_input(self, name: str, source: str, digest: str, context: str | None = None,
                  profile: dict | None = None) -> None:
        self._put("input", {"name": name, "source": source, "digest": digest, "context": context,
                            "profile": profile})

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        self._put("table", {"data": data, "artifact_file": artifact_file})

    def log_model(self, checkpoint: Path, config: Path) -> None:
        self._put("model", [str(Path(checkpoint).resolve()), str(Path(config).resolve())])

    def set_experiment_description(self, text: str) -> None:
        if self.experiment_id and text:
            self._put("note", {"experiment_id": self.experiment_id, "text": text})

    def end(self, status: str = "FINISHED") -> None:
        """Send what is queued and the run's status. When the server stopped answering, what is left
        is saved for the next run of the command: a finished run then fails with one line saying so
        (a failed or interrupted one only warns, so that its own error is the one reported)."""
        if self._worker is None:
            return
        self._stop_system_metrics()
        self._put("end", status)
        with self._cond:
            while self._queue and not (self._down_since and time.monotonic() - self._down_since > self.end_grace_s):
                self._cond.wait(0.2)
            self._stopped = True
            self._cond.notify_all()
            left = list(self._queue)
            self._queue.clear()
        self._worker = None
        self._save_pending([op for op in left if op[0] != "end"])
        if not left:
            return
        message = (f"the MLflow server at {self.tracking_uri} stopped answering ({self._error}); "
                   f"{_unsent(left)} not logged. Rerun the same command once it is back: the finished work is "
                   "reused from the cache and logged")
        if status == "FINISHED":
            raise TrackingError(message)
        log.warning(message)

    def where(self) -> str | None:
        """The run id, the store, and how to open the run: the ``mlflow ui`` command for a local store,
        the run's page on a tracking server."""
        if not self.run_id:
            return None
        lines = [f"MLflow run {self.run_id} in {self.tracking_uri}"]
        if urlparse(self.tracking_uri).scheme in ("http", "https"):
            lines.append(f"open: {self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}")
        else:
            lines.append(f"open: mlflow ui --backend-store-uri {self.tracking_uri}")
        return "\n".join(lines)

    def _work(self) -> None:
        delay = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                kind, payload, count = self._head()
            try:
                self._send(kind, payload)
            except Exception as exc:
                if _transient(exc):
                    with self._cond:
                        if self._down_since is None:
                            log.warning("the MLflow server at %s does not answer (%s); the run goes on and its "
                                        "records are sent when it is back", self.tracking_uri, _reason(exc))
                        self._down_since = self._down_since or time.monotonic()
                        self._error, self._doubt, self._known = _reason(exc), True, {}
                        self._cond.notify_all()
                        self._cond.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                log.warning("MLflow refused %s of run %s: %s", kind, self.run_id, _reason(exc))
            with self._cond:
                if self._stopped:  # end() gave up meanwhile and saved this record for the next run
                    return
                if self._down_since is not None:
                    log.info("the MLflow server at %s answers again", self.tracking_uri)
                self._down_since, delay = None, 0.5
                for _ in range(count):
                    self._queue.popleft()
                self._cond.notify_all()

    def _head(self) -> tuple[str, Any, int]:
        """The next record to send; consecutive metric records go as one batch."""
        kind, payload = self._queue[0]
        if kind != "metrics":
            return kind, payload, 1
        points, count = [], 0
        for kind, payload in self._queue:
            if kind != "metrics" or (points and len(points) + len(payload) > MAX_METRICS_PER_BATCH):
                break
            points += payload
            count += 1
        return "metrics", points, count

    def _send(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Param, RunTag

        client, run_id = self._client, self.run_id
        if kind == "metrics":
            self._send_metrics(payload)
        elif kind == "params":
            existing = client.get_run(run_id).data.params  # a continued run keeps its params
            items = [Param(k, v) for k, v in payload.items() if k not in existing]
            for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, params=items[i:i + MAX_PARAMS_PER_BATCH])
        elif kind == "tags":
            items = [RunTag(k, v) for k, v in payload.items()]
            for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
                client.log_batch(run_id, tags=items[i:i + MAX_PARAMS_PER_BATCH])
        elif kind == "artifact":
            path, artifact_path = Path(payload[0]), payload[1]
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path)
            elif path.is_file():
                client.log_artifact(run_id, str(path), artifact_path)
        elif kind == "input":
            self._send_input(payload)
        elif kind == "table":
            # a continued run (the same predictions) keeps its table: MLflow would append the rows again
            if payload["artifact_file"] not in {a.path for a in client.list_artifacts(run_id)}:
                client.log_table(run_id, data=payload["data"], artifact_file=payload["artifact_file"])
        elif kind == "model":
            self._send_model(Path(payload[0]), Path(payload[1]))
        elif kind == "note":
            client.set_experiment_tag(payload["experiment_id"], NOTE_TAG, payload["text"])
        elif kind == "end":
            client.set_terminated(run_id, payload)

    def _send_model(self, checkpoint: Path, config: Path) -> None:
        """The checkpoint as the run's MLflow model (a pyfunc that loads it with ``vlmexp.load_vlm``),
        registered as ``register_model``; once per run (a continued run that logged it keeps it)."""
        from vlmexp.tracking.pyfunc_model import log_checkpoint_model

        if not checkpoint.is_dir() or not config.is_file():
            return
        held = self._client.search_logged_models([self.experiment_id],
                                                 filter_string=f"source_run_id = '{self.run_id}'", max_results=1)
        if len(held) == 0:
            log_checkpoint_model(self.run_id, checkpoint, config, registered_model_name=self.register_model)

    def _send_input(self, payload: dict) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        profile = json.dumps(payload["profile"]) if payload.get("profile") else None
        dataset = Dataset(payload["name"], payload["digest"], "local", json.dumps({"uri": payload["source"]}),
                          profile=profile)
        tags = [InputTag("mlflow.data.context", payload["context"])] if payload.get("context") else None
        self._client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])

    def _send_metrics(self, points: list) -> None:
        """One batch; a point the server already holds (sent by this process, or before a kill or an
        outage) is not sent again: at a step, whatever its value; at step 0 (where results logged
        without a step go), when it equals the newest value held, so a new value (a timing of the
        attempt that finished, a final count after a first one) is still sent and wins."""
        from mlflow.entities import Metric

        if self._doubt:
            for key in {p[0] for p in points} - self._known.keys():
                history = self._client.get_metric_history(self.run_id, key)
                held: dict[int, float] = {m.step: m.value for m in history if m.step}
                at_zero = [m for m in history if not m.step]
                if at_zero:
                    held[0] = max(at_zero, key=lambda m: m.timestamp).value
                self._known[key] = held
        batch = []
        for key, value, timestamp, step in points:
            at = step or 0
            held = self._known.setdefault(key, {})
            if at in held and (at != 0 or _same(held[0], value)):
                continue
            held[at] = value
            batch.append(Metric(key, value, timestamp, at))
        if batch:
            self._client.log_batch(self.run_id, metrics=batch)

    # -- what a run could not send, for the next run of the command -----------------------------
    def _pending_file(self) -> Path | None:
        return self._state_dir / PENDING_FILE if self._state_dir is not None else None

    def _save_pending(self, ops: list) -> None:
        path = self._pending_file()
        if path is None:
            return
        if not ops:
            path.unlink(missing_ok=True)
            return
        lines = [json.dumps({"run_id": self.run_id}), *(json.dumps(op) for op in ops)]
        write_text_atomic(path, "\n".join(lines) + "\n")

    def _load_pending(self, resumed: bool) -> None:
        path = self._pending_file()
        if path is None or not path.is_file():
            return
        try:
            header, *ops = [json.loads(line) for line in path.read_text().splitlines() if line]
        except ValueError:
            header, ops = {}, []
        if resumed and header.get("run_id") == self.run_id:
            self._queue.extend(tuple(op) for op in ops)  # the file stays until these are sent
            log.info("sending %d records an earlier run could not log", len(ops))
        else:
            path.unlink()
