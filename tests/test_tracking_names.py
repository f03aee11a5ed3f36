"""What a run puts in MLflow for a person comparing runs: metrics under a namespace per phase
(``train/loss`` per step, ``val/loss`` per epoch, ``test/f1``, ``perf/...``, ``data/...``), params they can
read (choices and values; no class paths, paths, nulls or prompt texts), and where to look at it,
printed at the end. A real tiny smoke train_eval run through ``python -m vlmexp``."""

from __future__ import annotations

import mlflow
import pytest

from tests.conftest import run_cli
from vlmexp.tracking.names import find, logged, logged_name
from vlmexp.tracking.params import prompt_digest, readable_params

SMALL = ["task=smoke", "model=tiny", "mode=train_eval", "train.epochs=2", "data.synthetic.train_sequences=4",
         "data.synthetic.val_sequences=2", "data.synthetic.test_sequences=2", "data.synthetic.frames_per_sequence=4",
         "eval.bootstrap=50"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": ""}
    done = run_cli([*SMALL, f"paths.cache_dir={root / 'cache'}", f"logger.tracking_uri={uri}",
                    f"hydra.run.dir={root / 'out'}"], cwd=root, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    return root, uri, env, done, client, run


def test_metrics_are_namespaced_by_phase(cli_run):
    *_, client, run = cli_run
    metrics = run.data.metrics
    namespaces = ("train", "val", "test", "perf", "data", "system")
    assert all(k.split("/", 1)[0] in namespaces for k in metrics), sorted(metrics)
    assert {"train/loss", "train/lr", "val/loss", "val/best_epoch", "test/f1", "test/f1_ci_low", "test/f1_ci_high",
            "test/accuracy", "test/parse_success_rate", "perf/latency_p50_s", "perf/throughput_samples_per_s",
            "perf/eval_wall_s", "perf/oom_retries", "perf/engine_errors", "data/num_samples",
            "data/skipped_corrupt_images"} <= set(metrics)
    assert metrics["data/num_samples"] == 8 and metrics["data/skipped_corrupt_images"] == 0
    assert not {"trainable_params", "total_params", "train_loss", "f1", "num_images"} & set(metrics)
    run_id = run.info.run_id
    val = client.get_metric_history(run_id, "val/loss")
    assert sorted(m.step for m in val) == [1, 2]  # one step per epoch
    train = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    lr = sorted(client.get_metric_history(run_id, "train/lr"), key=lambda m: m.step)
    assert [m.step for m in train] == [m.step for m in lr] == list(range(1, len(train) + 1))
    # the rate each step used: warmup from 0 at the first step, never 0 at the last (cosine ends there after it)
    assert lr[-1].value > 0 and max(m.value for m in lr) <= 0.002
    assert run.data.tags["vlmexp.main_metric"] == "test/accuracy"  # the first of the task's table


def test_params_are_the_choices_and_values(cli_run):
    *_, run = cli_run
    params = run.data.params
    assert {"task": "smoke", "model": "tiny", "engine": "hf", "hardware": "auto", "trainer": "sft"}.items() \
        <= params.items()
    assert params["train.lr"] == "0.002" and params["train.epochs"] == "2" and params["mode"] == "train_eval"
    assert params["model.trainable_params"].isdigit() and params["model.total_params"].isdigit()
    assert params["train.effective_batch_size"] == "8"
    assert not [k for k in params if "_target_" in k or k.startswith(("paths.", "logger.")) or k.endswith("_dir")]
    assert not [k for k, v in params.items() if v == "None" or v.startswith("/")]
    assert "model.notes" not in params and "task.system_prompt" not in params
    assert params["task.system_prompt_sha256"] == prompt_digest(_resolved_task(cli_run)["system_prompt"])
    assert "task.context_prompt_sha256" not in params  # one frame per request: the key changes nothing
    assert len(params) <= 70, sorted(params)  # 94 before: every key of the resolved config


def _resolved_task(cli_run) -> dict:
    import yaml

    root, *_ = cli_run
    return yaml.safe_load((root / "out" / "resolved_config.yaml").read_text())["task"]


def test_the_end_of_the_run_says_where_it_is(cli_run):
    root, uri, env, done, _, run = cli_run
    lines = done.stdout.strip().splitlines()
    assert lines[-2:] == [f"MLflow run {run.info.run_id} in {uri}", f"open: mlflow ui --backend-store-uri {uri}"]
    again = run_cli([*SMALL, f"paths.cache_dir={root / 'cache'}", "logger=none", f"hydra.run.dir={root / 'none'}"],
                    cwd=root, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "MLflow run" not in again.stdout and "mlflow ui" not in again.stdout


def test_a_tracking_server_gets_the_run_page(monkeypatch):
    from vlmexp.tracking.mlflow_tracker import MlflowTracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = MlflowTracker("http://127.0.0.1:5000/", "smoke")
    tracker.run_id, tracker.experiment_id = "abc123", "7"
    assert tracker.where().splitlines() == ["MLflow run abc123 in http://127.0.0.1:5000/",
                                            "open: http://127.0.0.1:5000/#/experiments/7/runs/abc123"]


@pytest.mark.parametrize(("key", "phase", "name"), [
    ("train_loss", "train", "train/loss"), ("lr", "train", "train/lr"), ("val_loss", "val", "val/loss"),
    ("val_loss_step", "val", "val/loss_step"), ("val_exact_match", "val", "val/exact_match"),
    ("best_epoch", "val", "val/best_epoch"), ("f1", "test", "test/f1"), ("f1_ci_low", "test", "test/f1_ci_low"),
    ("f1_robust", "test", "test/f1_robust"), ("latency_p50_s", "test", "perf/latency_p50_s"),
    ("latency_score", "test", "test/latency_score"), ("tokens_per_s", "test", "perf/tokens_per_s"),
    ("cost_per_1k_samples", "test", "perf/cost_per_1k_samples"), ("eval_wall_s", "test", "perf/eval_wall_s"),
    ("num_samples", "test", "data/num_samples"), ("skipped_missing_images", "test", "data/skipped_missing_images"),
    ("val_questions", "test", "data/val_questions"), ("by_source/camA/f1", "test", "test/by_source/camA/f1"),
    ("test/f1", "val", "test/f1"),
    # names of runs logged before namespaces
    ("num_images", "test", "data/num_samples"), ("throughput_videos_per_s", "test", "perf/throughput_samples_per_s"),
    ("skipped_images", "test", "data/skipped_corrupt_images"),
])
def test_logged_names(key, phase, name):
    assert logged_name(key, phase) == name


def test_old_and_new_names_find_each_other():
    old_run = {"f1": 0.5, "train_loss": 0.1, "num_images": 8.0, "f1_ci_low": 0.4}
    assert logged(old_run) == {"test/f1": 0.5, "train/loss": 0.1, "data/num_samples": 8.0, "test/f1_ci_low": 0.4}
    assert find(old_run, "test/f1") == "f1" and find(old_run, "num_samples") == "num_images"
    new_run = {"test/f1": 0.5, "data/num_samples": 8.0}
    assert find(new_run, "f1") == "test/f1" and find(new_run, "num_images") == "data/num_samples"
    assert find(new_run, "recall") is None


def test_readable_params_rules():
    resolved = {"seed": 1, "paths": {"cache_dir": "/c"}, "logger": {"experiment": "x"},
                "task": {"_target_": "a.B", "user_prompt": "Is there smoke?", "context_prompt": "x", "n": None},
                "model": {"hf_id": "Qwen/Qwen2.5-VL-3B-Instruct", "local_builder": {"cache_dir": "rel/dir"},
                          "weights": "~/w.bin", "notes": "free text"},
                "data": {"root": "data/x", "limit": 4}}
    assert readable_params(resolved, {"model": "tiny", "task_model": None, "hydra/launcher": "basic"},
                           inert=("context_prompt",)) == {
        "model": "tiny", "seed": 1, "task.user_prompt_sha256": prompt_digest("Is there smoke?"),
        "model.hf_id": "Qwen/Qwen2.5-VL-3B-Instruct", "data.limit": 4}


def test_a_run_that_does_not_train_logs_no_training_settings():
    resolved = {"mode": "eval", "seed": 1, "train": {"lr": 0.1}, "task": {"explain": False, "explain_prompt": "x"},
                "engine": {"lora": {"enabled": False, "r": 8}}}
    assert readable_params(resolved, {"trainer": "sft", "engine": "hf"}) == {
        "engine": "hf", "mode": "eval", "seed": 1, "task.explain": False, "engine.lora.enabled": False}


def _logged_run(client, experiment: str, name: str, metrics: dict, params: dict, tags: dict) -> str:
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(client.get_experiment_by_name(experiment).experiment_id, run_name=name)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()], tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_the_report_ranks_runs_of_this_release_and_the_previous_one_together(tmp_path):
    """A run logged with flat names and ``_target_`` params (the previous release) and one logged today."""
    from vlmexp.report import build_leaderboard

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_experiment("smoke")
    data = {"vlmexp.dataset_fingerprint": "fp", "vlmexp.mode": "eval"}
    _logged_run(client, "smoke", "old", {"f1": 0.5, "f1_ci_low": 0.4, "f1_ci_high": 0.6, "latency_p50_s": 2.0,
                                         "throughput_images_per_s": 3.0},
                {"task._target_": "vlmexp.tasks.smoke.SmokeTask", "engine._target_": "vlmexp.engines.hf.HFEngine"},
                {**data, "vlmexp.model": "qwen7b"})
    _logged_run(client, "smoke", "new", {"test/f1": 0.75, "test/f1_ci_low": 0.7, "test/f1_ci_high": 0.8,
                                         "perf/latency_p50_s": 1.0, "perf/throughput_samples_per_s": 5.0}, {},
                {**data, "vlmexp.model": "tiny", "vlmexp.task_class": "vlmexp.tasks.smoke.SmokeTask",
                 "vlmexp.engine_class": "vlmexp.engines.ollama.OllamaEngine"})
    board = build_leaderboard(client, "smoke")
    assert (board.main_metric, board.metrics) == ("test/f1", ["test/f1"])
    assert [(r.model, r.engine, r.metrics["test/f1"], r.latency, r.throughput) for r in board.rows] == [
        ("tiny", "OllamaEngine", 0.75, 1.0, 5.0), ("qwen7b", "HFEngine", 0.5, 2.0, 3.0)]
    assert build_leaderboard(client, "smoke", metric="f1").main_metric == "test/f1"


def test_the_sweep_summary_reads_the_metric_by_any_of_its_names(tmp_path):
    from vlmexp.tracking.sweep_summary import summarise

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("smoke")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    for number, (lr, f1) in enumerate([("0.001", 0.5), ("0.003", 0.75)]):
        child = client.create_run(experiment, run_name=f"job #{number}",
                                  tags={"mlflow.parentRunId": parent, "vlmexp.overrides": f"train.lr={lr}",
                                        "vlmexp.main_metric": "test/f1"}).info.run_id
        client.log_metric(child, "test/f1", f1)
        client.set_terminated(child, "FINISHED")
    summary = summarise(client, parent, tmp_path, "f1", "maximize")
    assert summary["metric"] == "test/f1" and summary["swept"] == ["train.lr"]
    best = client.get_run(parent).data
    assert best.metrics["sweep/best"] == 0.75 and best.params["best_train.lr"] == "0.003"


def test_a_sweep_ranks_by_a_short_or_logged_name(compose_cfg):
    from vlmexp.runner import main_metric

    metrics = {"f1": 0.5, "accuracy": 0.9}
    for name in ("f1", "test/f1"):
        assert main_metric(compose_cfg([f"sweep.metric={name}"]), metrics) == "f1"
    assert main_metric(compose_cfg([]), metrics) == "accuracy"  # the first of the smoke task's table
