"""task=binary end to end through the command line and the runner, with a real MLflow store."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

from tests.conftest import compose_config, run_cli
from tests.helpers import ScriptedEngine, assert_learned, image_key
from vlmexp.data.images import open_image
from vlmexp.data.synthetic_binary import write_binary_split
from vlmexp.errors import ConfigError
from vlmexp.runner import run


class GenerateOnlyEngine(ScriptedEngine):
    supports_scoring = False


def _append(jsonl: Path, lines: list[dict]) -> None:
    with jsonl.open("a") as fh:
        fh.writelines(json.dumps(line) + "\n" for line in lines)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """The generated two-class set plus, in train, one missing and one corrupt image and, in test, one
    missing and two corrupt (a text file and a truncated PNG)."""
    root = tmp_path_factory.mktemp("binary-set")
    rng = np.random.default_rng(0)
    files = {split: write_binary_split(root, split, rng, n, 112, 112)
             for split, n in (("train", 64), ("val", 24), ("test", 40))}
    (root / "garbage.png").write_text("not an image")
    whole = (root / "test" / "0000.png").read_bytes()
    (root / "truncated.png").write_bytes(whole[:len(whole) // 2])
    _append(files["train"], [{"image_path": "gone.png", "text": "q", "label": 1},
                             {"image_path": "garbage.png", "text": "q", "label": 0}])
    _append(files["test"], [{"image_path": "gone.png", "text": "q", "label": 0},
                            {"image_path": "garbage.png", "text": "q", "label": 1},
                            {"image_path": str(root / "truncated.png"), "text": "q", "label": 0}])
    return files


def _mlflow_run(experiment: str = "binary"):
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time DESC"])
    return client, runs


def _artifacts(client, run_id: str, path: str = "") -> set[str]:
    names = set()
    for item in client.list_artifacts(run_id, path):
        names |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return names


def _probs(predictions: Path) -> dict[str, list[float]]:
    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    return {r["id"]: r["probs"] for r in records if not r.get("skipped")}


@pytest.mark.slow
def test_train_eval_from_the_data_files_alone(dataset, cache_dir, tmp_path):
    data = [f"data.{split}_file={path}" for split, path in dataset.items()]
    out = run_cli(["task=binary", "model=tiny", "mode=train_eval", *data, f"paths.cache_dir={cache_dir}",
                   f"hydra.run.dir={tmp_path / 'train_eval'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "roc_auc" in out.stdout and "skipped_corrupt_images" in out.stdout

    client, runs = _mlflow_run()
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id, metrics = runs[0].info.run_id, runs[0].data.metrics
    assert_learned(metrics, {"test/accuracy": 0.9, "test/roc_auc": 0.9})
    for key in ("test/precision", "test/recall", "test/f1", "val/best_epoch"):
        assert key in metrics
    assert metrics["data/num_samples"] == 40
    assert metrics["data/skipped_missing_images"] == 2
    assert metrics["data/skipped_corrupt_images"] == 3
    assert runs[0].data.params["model.trainable_params"] == str(128 * 512 + 512 + 512 * 2 + 2)
    val_loss = client.get_metric_history(run_id, "val/loss")
    assert [m.step for m in val_loss] == list(range(1, len(val_loss) + 1)) and len(val_loss) >= 2
    assert metrics["val/best_epoch"] == min(val_loss, key=lambda m: m.value).step
    artifacts = _artifacts(client, run_id)
    assert {"checkpoint/head.safetensors", "checkpoint/head_config.json", "confusion_matrix.png", "roc_curve.png",
            "loss_curve.png", "predictions.jsonl"} <= artifacts
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in artifacts)

    # The saved head, loaded by a fresh process in mode=eval, predicts exactly the same probabilities.
    checkpoint = runs[0].data.tags["vlmexp.checkpoint_dir"]
    out = run_cli(["task=binary", "model=tiny", "mode=eval", f"task.checkpoint={checkpoint}",
                   f"data.test_file={dataset['test']}", f"paths.cache_dir={cache_dir}",
                   f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    trained = _probs(tmp_path / "train_eval" / "predictions.jsonl")
    assert len(trained) == 40
    assert _probs(tmp_path / "eval" / "predictions.jsonl") == trained
    _, runs = _mlflow_run()
    assert runs[0].data.metrics["test/accuracy"] == metrics["test/accuracy"]
    assert runs[0].data.metrics["data/skipped_corrupt_images"] == 2  # only the test file is read in mode=eval


def test_malformed_line_stops_the_run_with_one_line(dataset, cache_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    shutil.copy(dataset["val"], bad)
    with bad.open("a") as fh:
        fh.write('{"image_path": "x.png", "text": "q", "label": "yes"}\n')
    lines = len(bad.read_text().splitlines())
    out = run_cli(["task=binary", f"data.train_file={dataset['train']}", f"data.val_file={bad}",
                   f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {bad}:{lines}: key 'label' must be int, got \"yes\""


def _scripted(cfg, scores: dict) -> None:
    with open_dict(cfg):
        cfg.engine = OmegaConf.create({"_target_": "tests.helpers.ScriptedEngine", "scores": scores})


def test_without_a_checkpoint_the_class_names_are_scored_zero_shot(tmp_path, cache_dir):
    """Metrics worked out by hand from scripted log-probabilities of the answers "0" and "1"."""
    files = {"test": write_binary_split(tmp_path, "test", np.random.default_rng(5), 4, 32, 32)}
    lines = [json.loads(line) for line in files["test"].read_text().splitlines()]
    # (truth, scores of "0" and "1"): p1 = 0.8, 1/(1+e), e^-3/(1+e^-3), 1/(1+e^-0.5)
    wanted = {1: [[math.log(0.2), math.log(0.8)], [-1.0, -2.0]], 0: [[0.0, -3.0], [-0.5, 0.0]]}
    scores = {}
    for line in lines:
        key = image_key(open_image(tmp_path / line["image_path"]))
        scores[key] = wanted[line["label"]].pop(0)
    cfg = compose_config(["task=binary", "mode=eval", "logger=none", f"data.test_file={files['test']}",
                          f"paths.cache_dir={cache_dir}"])
    _scripted(cfg, scores)
    metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["accuracy"] == 0.5 and metrics["precision"] == 0.5 and metrics["recall"] == 0.5
    assert metrics["roc_auc"] == 0.75  # positives 0.8, 0.27 against negatives 0.05, 0.62: 3 of 4 pairs
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    p1 = {truth: sorted(round(r["prob"], 6) for r in records if r["truth"] == truth) for truth in (0, 1)}
    assert p1[1] == [round(1 / (1 + math.e), 6), 0.8]
    assert p1[0] == [round(math.exp(-3) / (1 + math.exp(-3)), 6), round(1 / (1 + math.exp(-0.5)), 6)]
    assert [r["pred"] for r in records] == [int(r["prob"] > 0.5) for r in records]
    assert (tmp_path / "out" / "roc_curve.png").is_file() and (tmp_path / "out" / "confusion_matrix.png").is_file()


def test_zero_shot_needs_an_engine_that_scores(tmp_path, cache_dir):
    files = {"test": write_binary_split(tmp_path, "test", np.random.default_rng(5), 2, 32, 32)}
    cfg = compose_config(["task=binary", "mode=eval", "logger=none", f"data.test_file={files['test']}",
                          f"paths.cache_dir={cache_dir}"])
    with open_dict(cfg):
        cfg.engine = OmegaConf.create({"_target_": "tests.test_binary_cli.GenerateOnlyEngine"})
    with pytest.raises(ConfigError, match="cannot score; use engine=hf"):
        run(cfg, output_dir=tmp_path / "out")
