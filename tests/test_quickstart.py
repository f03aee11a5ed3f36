"""The quickstart, end to end: fine-tune the tiny model, evaluate, and check what MLflow holds."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from tests.conftest import compose_config
from tests.helpers import assert_learned
from vlmexp.runner import run


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, cache_dir):
    """`python -m vlmexp` with nothing but a private cache and tracking store."""
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cfg = compose_config([f"paths.cache_dir={cache_dir}", f"logger.tracking_uri={uri}"])
    out = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        metrics = run(cfg, output_dir=out, overrides=["paths.cache_dir=..."])
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    return metrics, runs, store, out, client


def test_reaches_the_quickstart_numbers(quickstart):
    metrics, *_ = quickstart
    # bench/quickstart.py --seeds 0-9 (README, Performance) supports these floors with a margin.
    assert_learned(metrics, {"f1": 0.9, "parse_success_rate": 0.95})
    assert metrics["num_samples"] == 80 and metrics["skipped_corrupt_images"] == 0


def test_mlflow_run_holds_params_metrics_artifacts_and_tags(quickstart):
    metrics, runs, store, out, client = quickstart
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.data.params["model.name"] == "tiny" and r.data.params["mode"] == "train_eval"
    assert r.data.params["train.lr"] == "0.002"
    for key in ("test/accuracy", "test/precision", "test/recall", "test/f1", "test/parse_success_rate", "train/loss",
                "train/lr", "val/loss", "val/best_epoch", "perf/latency_p50_s", "perf/tokens_per_s"):
        assert key in r.data.metrics, key
    assert r.data.params["model.trainable_params"].isdigit() and r.data.params["model.total_params"].isdigit()
    assert r.data.metrics["test/f1"] == pytest.approx(metrics["f1"])
    history = client.get_metric_history(r.info.run_id, "train/loss")
    assert len(history) > 20 and history[0].step == 1
    tags = r.data.tags
    assert len(tags["vlmexp.git_commit"]) >= 7
    assert tags["version.torch"] and tags["version.transformers"] and tags["version.vlmexp"] == "0.1.0"
    assert len(tags["vlmexp.dataset_fingerprint"]) == 16
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"resolved_config.yaml", "overrides.yaml", "predictions.jsonl", "loss_curve.png",
            "confusion_matrix.png", "checkpoint"} <= artifacts
    # artifacts live beside the SQLite store, never in the working or run directory
    assert r.info.artifact_uri.startswith((store / "mlartifacts").as_uri())
    assert (out / "predictions.jsonl").is_file()


def test_resolved_config_artifact_has_the_job_keys(quickstart):
    _, runs, _, out, client = quickstart
    path = client.download_artifacts(runs[0].info.run_id, "resolved_config.yaml", str(out))
    text = Path(path).read_text()
    assert "${" not in text  # interpolations resolved
    for key in ("mode:", "seed:", "task:", "model:", "engine:", "hardware:", "logger:", "data:", "train:"):
        assert f"\n{key}" in "\n" + text


def test_same_config_gives_the_same_metrics(quickstart, cache_dir, tmp_path):
    """A rerun finds the finished training and predictions by fingerprint: identical metrics."""
    metrics, *_ = quickstart
    cfg = compose_config([f"paths.cache_dir={cache_dir}", "logger=none"])
    again = run(cfg, output_dir=tmp_path)
    for key in ("accuracy", "precision", "recall", "f1", "parse_success_rate", "best_epoch"):
        assert again[key] == metrics[key]


TIMED = ("latency", "throughput", "tokens_per_s", "wall_s", "early_fire_score", "latency_score")


def test_two_fresh_runs_give_identical_metrics(tmp_path):
    """The same config in two empty caches (model, data and training built from scratch each time): every
    metric that does not measure time is identical, to the last bit."""
    short = ["train.epochs=2", "data.synthetic.train_sequences=4", "data.synthetic.val_sequences=2",
             "data.synthetic.test_sequences=2", "logger=none"]
    runs = [run(compose_config([f"paths.cache_dir={tmp_path / name}", *short]), output_dir=tmp_path / f"out-{name}")
            for name in ("first", "second")]
    untimed = [{k: v for k, v in m.items() if not any(t in k for t in TIMED)} for m in runs]
    assert len(untimed[0]) > 10 and untimed[0] == untimed[1]
