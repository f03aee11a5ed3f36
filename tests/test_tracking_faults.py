"""A real MLflow server on 127.0.0.1 that is not there, or is killed while the tiny model trains: the
run stops at once with one line, or goes on and ends with one line, keeping its work; once the
server is back the same command logs the rest, each train_loss step once. A run killed in its second
epoch and continued logs each step once too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, run_cli
from tests.vqa_helpers import write_split


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on a SQLite store and an artifact folder under ``root``; kill and restart it
    on the same port and store."""

    def __init__(self, root: Path, template_db: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True)
        shutil.copyfile(template_db, root / "mlflow.db")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", (self.root / "artifacts").as_uri()],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.kill()
        pytest.fail(f"mlflow server did not start in {timeout} s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path, _mlflow_template, monkeypatch):
    # this test's own client: one quick try per request
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    server = MlflowServer(tmp_path / "server", _mlflow_template)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    yield server
    server.kill()


def vqa_args(tmp_path: Path, cache: Path) -> list[str]:
    train, val = write_split(tmp_path / "data", "train", 8, seed=1), write_split(tmp_path / "data", "val", 2, seed=2)
    return ["task=vqa", "model=tiny", f"data.train_file={train}", f"data.val_file={val}", f"paths.cache_dir={cache}",
            "train.epochs=2", "train.batch_size=4", "train.patience=5"]  # 16 questions: 4 steps an epoch


def tiny_cache(tmp_path: Path, cache_dir) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(Path(cache_dir) / "models")  # the tiny model, built once per session
    return cache


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_unreachable_server_stops_the_run_at_once_before_any_model(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cache = tmp_path / "cache"
    args = vqa_args(tmp_path, cache)
    began = time.monotonic()
    result = run_cli(args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}, timeout=60)
    elapsed = time.monotonic() - began
    assert result.returncode == 2, result.stderr[-3000:]
    assert error_lines(result.stderr) == [
        f"error: the MLflow server at {uri} does not answer (Connection refused): start it, or point "
        "MLFLOW_TRACKING_URI at a store that works (logger=none logs nothing)"]
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr
    assert elapsed < 15
    assert not (cache / "models").exists() and not (cache / "runs").exists()


def test_records_wait_for_a_server_that_comes_back_and_each_step_is_stored_once(tmp_path, mlflow_server):
    import mlflow

    from vlmexp.tracking.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(mlflow_server.uri, experiment="faults")
    tracker.end_grace_s = 120  # this test waits for the server to come back
    run_id = tracker.start("faults", state_dir=tmp_path)
    client = mlflow.MlflowClient(mlflow_server.uri)
    for step in range(1, 6):
        tracker.log_metrics({"train_loss": 1.0 / step}, step=step)
    deadline = time.monotonic() + 30
    while len(client.get_metric_history(run_id, "train_loss")) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    mlflow_server.kill()
    began = time.monotonic()
    for step in range(4, 201):  # 4 and 5 again: a batch the server stored before its answer was lost
        tracker.log_metrics({"train_loss": 1.0 / step}, step=step)
    tracker.set_tags({"after": "outage"})
    assert time.monotonic() - began < 1  # nothing waits on the server
    mlflow_server.start()
    tracker.end("FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["after"] == "outage"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(range(1, 201))
    assert not (tmp_path / "mlflow_pending.jsonl").exists()


@pytest.mark.slow
def test_server_killed_mid_training_then_back_logs_each_step_once(tmp_path, cache_dir, tiny_checkpoint,
                                                                 mlflow_server):
    import mlflow

    cache = tiny_cache(tmp_path, cache_dir)
    args = vqa_args(tmp_path, cache)
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server.uri, PYTHONPATH=str(REPO))
    client = mlflow.MlflowClient(mlflow_server.uri)
    with (tmp_path / "first.out").open("w") as out, (tmp_path / "first.err").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vlmexp", *args], cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        deadline, run_id = time.monotonic() + 240, None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((cache / "runs" / "vqa").glob("*/mlflow_run_id"))
            run_id = run_id or (found[0].read_text().strip() if found else None)
            if run_id and client.get_metric_history(run_id, "train/loss"):
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
        assert run_id and client.get_metric_history(run_id, "train/loss"), "no train/loss reached the server"
        mlflow_server.kill()
        began = time.monotonic()
        proc.wait(timeout=120)  # the run neither hangs nor waits minutes on the server
        assert time.monotonic() - began < 120
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "first.err").read_text()
    assert proc.returncode == 2, stderr[-3000:]
    [line] = error_lines(stderr)
    assert line.startswith(f"error: the MLflow server at {mlflow_server.uri} stopped answering (Connection refused); ")
    assert " metric values " in line and line.endswith(
        "not logged. Rerun the same command once it is back: the finished work is reused from the cache and logged")
    assert "Traceback" not in stderr
    [work_dir] = [p.parent for p in (cache / "runs" / "vqa").glob("*/mlflow_run_id")]
    assert (work_dir / "predictions.jsonl").is_file() and (work_dir / "mlflow_pending.jsonl").is_file()
    assert "exact_match" in (tmp_path / "first.out").read_text()  # training and evaluation went on

    mlflow_server.start()  # the same port and store
    result = run_cli(args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": mlflow_server.uri}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 9))
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/loss")) == [1, 2]
    assert {"test/exact_match", "val/best_epoch", "perf/eval_wall_s"} <= set(run.data.metrics)
    assert run.data.params["train.epochs"] == "2"
    assert {"loss_curve.png", "predictions.jsonl", "checkpoint"} <= {a.path for a in client.list_artifacts(run_id)}
    assert not (work_dir / "mlflow_pending.jsonl").exists()
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_run_killed_in_its_second_epoch_and_continued_logs_each_step_once(tmp_path, cache_dir, tiny_checkpoint):
    import mlflow

    cache = tiny_cache(tmp_path, cache_dir)
    args = vqa_args(tmp_path, cache)
    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's own SQLite store
    client = mlflow.MlflowClient(uri)
    with (tmp_path / "first.err").open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "vlmexp", *args], cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, steps, run_id = time.monotonic() + 240, [], None
        while time.monotonic() < deadline and proc.poll() is None and max(steps, default=0) < 6:
            found = list((cache / "runs" / "vqa").glob("*/mlflow_run_id"))
            run_id = run_id or (found[0].read_text().strip() if found else None)
            steps = [m.step for m in client.get_metric_history(run_id, "train/loss")] if run_id else []
            time.sleep(0.1)
        assert proc.poll() is None and max(steps, default=0) >= 6, (tmp_path / "first.err").read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)  # in epoch 2 (steps 5-8), after epoch 1 was saved
        proc.wait(timeout=30)
        # metrics reach the store a little after the steps run: epoch 2 may have been saved just before
        [progress] = (cache / "runs" / "vqa").glob("*/train_state/progress.json")
        saved_epoch = json.loads(progress.read_text())["epoch"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert client.get_run(run_id).info.status == "RUNNING"

    result = run_cli(args, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert saved_epoch in (1, 2)
    if saved_epoch == 1:  # else the last epoch was saved: the rerun only finishes logging and evaluates
        assert "resuming training after epoch 1" in result.stdout + result.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/loss")) == list(range(1, 9))
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/lr")) == list(range(1, 9))
    assert sorted(m.step for m in client.get_metric_history(run_id, "val/loss")) == [1, 2]


def test_a_continued_run_logs_a_repeated_final_result_once_and_a_new_timing_again(tmp_path):
    """Results logged without a step go to step 0: a continued run that logs the newest value again
    (a kill after the first attempt logged it) adds nothing; another value (a timing) is added and wins."""
    import mlflow

    from vlmexp.tracking.mlflow_tracker import MlflowTracker

    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's own store (conftest)
    first = MlflowTracker(uri, experiment="resume")
    first.check()
    run_id = first.start("job", state_dir=tmp_path)
    first.log_metrics({"skipped_missing_images": 0.0, "eval_wall_s": 1.5, "count": 1.0, "roc_auc": float("nan")})
    time.sleep(0.01)  # a later timestamp: the newest value is well defined
    first.log_metrics({"count": 2.0})
    first.log_metrics({"train_loss": 2.0}, step=1)
    first.end("KILLED")
    time.sleep(0.01)
    again = MlflowTracker(uri, experiment="resume")
    assert again.start("job", resume_run_id=run_id, state_dir=tmp_path) == run_id
    again.log_metrics({"skipped_missing_images": 0.0, "eval_wall_s": 2.5, "count": 1.0, "roc_auc": float("nan")})
    again.log_metrics({"train_loss": 2.0}, step=1)
    again.log_metrics({"train_loss": 1.0}, step=2)
    again.end("FINISHED")
    client = mlflow.MlflowClient(uri)

    def history(key):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    assert history("skipped_missing_images") == [(0, 0.0)]
    assert history("train_loss") == [(1, 2.0), (2, 1.0)]
    assert sorted(history("eval_wall_s")) == [(0, 1.5), (0, 2.5)]
    assert client.get_run(run_id).data.metrics["eval_wall_s"] == 2.5
    assert [v for _, v in history("count")] == [1.0, 2.0, 1.0]  # the newest value, not one held earlier, counts
    assert client.get_run(run_id).data.metrics["count"] == 1.0
    assert len(history("roc_auc")) == 1  # NaN equals NaN here


def test_a_run_killed_before_it_noted_its_run_id_is_continued_not_duplicated(tmp_path):
    """A kill between opening the MLflow run and writing ``mlflow_run_id`` leaves a RUNNING run that
    holds the work dir's claim token; the rerun continues that run instead of opening a second one.
    Without the token (``resume=false`` removed it, or another machine made the run) nothing is taken over."""
    import mlflow

    from vlmexp.tracking.mlflow_tracker import CLAIM_FILE, MlflowTracker

    uri = os.environ["MLFLOW_TRACKING_URI"]
    client = mlflow.MlflowClient(uri)
    work = tmp_path / "runs" / "vqa" / "abc-123"
    work.mkdir(parents=True)

    class Killed(Exception):
        pass

    killed = MlflowTracker(uri, experiment="orphans")
    with pytest.MonkeyPatch.context() as patch:  # a kill right after the run is created
        patch.setattr(MlflowTracker, "_load_pending", lambda self, resumed: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            killed.start("job", state_dir=work)
    [orphan] = client.search_runs([client.get_experiment_by_name("orphans").experiment_id])
    assert orphan.info.status == "RUNNING" and (work / CLAIM_FILE).is_file()

    rerun = MlflowTracker(uri, experiment="orphans")
    assert rerun.start("job", state_dir=work) == orphan.info.run_id
    rerun.end("FINISHED")
    (work / CLAIM_FILE).unlink()  # as resume=false leaves the work dir
    client.update_run(orphan.info.run_id, status="RUNNING")
    fresh = MlflowTracker(uri, experiment="orphans")
    assert fresh.start("job", state_dir=work) != orphan.info.run_id
    fresh.end("FINISHED")
    assert len(client.search_runs([client.get_experiment_by_name("orphans").experiment_id])) == 2
