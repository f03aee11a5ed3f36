"""``python -m vlmexp task=vqa`` as a user runs it: a malformed line is one error line; the tiny model
learns colour and brightness questions with nothing set beyond the data files."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run_cli
from tests.helpers import assert_learned
from tests.vqa_helpers import write_jsonl, write_split


def test_malformed_line_stops_with_one_line_naming_file_and_line(tmp_path, cache_dir):
    train = write_split(tmp_path, "train", 2, seed=1)
    lines = train.read_text().splitlines()
    write_jsonl(train, [lines[0], '{"image_path": "train/img000.png", "question": "Colour?", "answer": ', *lines[1:]])
    result = run_cli(["task=vqa", "model=tiny", f"data.train_file={train}", f"data.val_file={train}",
                      f"paths.cache_dir={cache_dir}", "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {train}:2: not valid JSON (Expecting value at column 69)"]


@pytest.mark.slow
def test_tiny_model_learns_colour_and_brightness_questions(tmp_path, cache_dir, tiny_checkpoint):
    import mlflow

    train, val = write_split(tmp_path, "train", 48, seed=1), write_split(tmp_path, "val", 16, seed=2)
    result = run_cli(["task=vqa", "model=tiny", "mode=train_eval", f"data.train_file={train}",
                      f"data.val_file={val}", f"paths.cache_dir={cache_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = mlflow.MlflowClient()
    (found,) = mlflow.search_runs(experiment_names=["vqa"], output_format="list")
    metrics, run_id = found.data.metrics, found.info.run_id
    assert_learned(metrics, {"test/exact_match": 0.8})
    assert metrics["data/val_questions"] == 32
    val_loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val/loss"))
    assert len(val_loss) >= 2 and [step for step, _ in val_loss] == list(range(1, len(val_loss) + 1))
    assert metrics["val/best_epoch"] == min(val_loss, key=lambda point: point[1])[0]
    assert len(client.get_metric_history(run_id, "val/exact_match")) == len(val_loss)
    assert len(client.get_metric_history(run_id, "train/loss")) >= len(val_loss) * 12  # 96 questions / batch 8
    params = found.data.params
    assert 0 < int(params["model.trainable_params"]) < int(params["model.total_params"])  # the vision encoder is frozen
    assert metrics["data/skipped_missing_images"] == metrics["data/skipped_corrupt_images"] == 0

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"loss_curve.png", "vqa_samples.csv", "predictions.jsonl", "checkpoint"} <= artifacts
    checkpoint = {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert {"checkpoint/model.safetensors", "checkpoint/processor_config.json"} <= checkpoint
    (run_dir,) = (tmp_path / "outputs" / "vqa").iterdir()
    with (run_dir / "vqa_samples.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 32 and {r["question"] for r in rows} == {"What colour is the shape?",
                                                                  "Is the background light or dark?"}
    assert sum(r["correct"] == "True" for r in rows) / len(rows) == metrics["test/exact_match"]
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert {p["answer"] for p in predictions} == {"red", "green", "blue", "yellow", "light", "dark"}
    assert "exact_match" in result.stdout
