"""Runner behaviour with a scripted engine: interrupt, crash, resume, sweeps, tracking locations."""

from __future__ import annotations

import json

import mlflow
import pytest

from tests.conftest import REPO, compose_config, run_cli
from vlmexp.runner import run
from vlmexp.tracking.mlflow_tracker import artifact_root_for, default_tracking_uri

SCRIPTED = "engine._target_=tests.helpers.ScriptedEngine"


def eval_overrides(cache_dir, tmp_path, *extra):
    return [f"paths.cache_dir={cache_dir}", "mode=eval", SCRIPTED, "engine.batch_size=4",
            "+engine.default='{\"has_smoke\": true, \"bbox\": [0.5, 0.5, 0.2, 0.2]}'",
            f"+engine.call_log={tmp_path / 'calls.log'}", *extra]


def runs_of(experiment="smoke"):
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_interrupted_evaluation_resumes_without_loss_or_duplicates(cache_dir, tmp_path):
    cfg = compose_config(eval_overrides(cache_dir, tmp_path, "+engine.interrupt_after=10"))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, output_dir=tmp_path / "a")
    [killed] = runs_of()
    assert killed.info.status == "KILLED"
    answered_before = (tmp_path / "calls.log").read_text().splitlines()
    assert len(answered_before) == 10

    metrics = run(cfg, output_dir=tmp_path / "b")  # the same command again
    [finished] = runs_of()  # the interrupted run was continued, not duplicated
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert metrics["num_samples"] == 80
    predictions = [json.loads(line) for line in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len({p["id"] for p in predictions}) == 80
    # batches of 4: the first two were stored before Ctrl-C hit the third, whose 2 answers are redone
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 10 + 80 - 8
    # "smoke" everywhere: precision is the share of smoke frames in the generated test set, 52 of 80
    assert metrics["recall"] == 1.0 and metrics["precision"] == pytest.approx(52 / 80)


def test_crash_marks_the_run_failed(cache_dir, tmp_path):
    cfg = compose_config(eval_overrides(cache_dir, tmp_path, "+engine.fail_after=5"))
    with pytest.raises(RuntimeError):
        run(cfg, output_dir=tmp_path)
    assert [r.info.status for r in runs_of()] == ["FAILED"]


def test_resume_false_starts_over(cache_dir, tmp_path):
    run(compose_config(eval_overrides(cache_dir, tmp_path, "data.limit=8")), output_dir=tmp_path / "a")
    run(compose_config(eval_overrides(cache_dir, tmp_path, "data.limit=8")), output_dir=tmp_path / "b")
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 8  # second run reused everything
    run(compose_config(eval_overrides(cache_dir, tmp_path, "data.limit=8", "resume=false")), output_dir=tmp_path / "c")
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 16


def test_sweep_jobs_are_grouped_under_a_parent_run(cache_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'sweep.db'}"
    args = ["-m", *eval_overrides(cache_dir, tmp_path, "data.limit=4"), "seed=1,2"]
    result = run_cli(args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-2000:]
    mlflow.set_tracking_uri(uri)
    runs = runs_of()
    parents = [r for r in runs if "vlmexp.sweep_parent" in r.data.tags]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.params["seed"] for r in children} == {"1", "2"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert len({r.data.tags["vlmexp.sweep"] for r in runs}) == 1


def test_default_tracking_store_is_at_the_project_root():
    assert default_tracking_uri() == f"sqlite:///{REPO / 'mlflow.db'}"


def test_artifacts_go_beside_the_store_whatever_the_uri(tmp_path):
    assert artifact_root_for(f"sqlite:///{tmp_path}/x/mlflow.db") == (tmp_path / "x" / "mlartifacts").as_uri()
    assert artifact_root_for(str(tmp_path / "store")) == (tmp_path / "store").as_uri()
    assert artifact_root_for("http://127.0.0.1:5000") is None


def test_env_tracking_uri_wins_and_keeps_artifacts_beside_it(cache_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'env' / 'mlflow.db'}"
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = compose_config(eval_overrides(cache_dir, tmp_path, "data.limit=4", "logger.tracking_uri=sqlite:///nowhere.db"))
    run(cfg, output_dir=tmp_path / "out")
    mlflow.set_tracking_uri(uri)
    [r] = runs_of()
    assert r.info.artifact_uri.startswith((tmp_path / "env" / "mlartifacts").as_uri())
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "nowhere.db").exists()
