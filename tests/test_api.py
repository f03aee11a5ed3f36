"""``vlmexp.load_vlm``: a checkpoint fine-tuned by ``python -m vlmexp task=vqa`` answers through the Python API
exactly as its evaluation did (same requests, same engine), loaded from its folder or its MLflow run id."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.vqa_helpers import write_split
from vlmexp.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir, tiny_checkpoint):
    """The tiny model fine-tuned for one short epoch, with its MLflow run and its evaluated answers."""
    import mlflow

    folder = tmp_path_factory.mktemp("api")
    db = folder / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    train, val = write_split(folder, "train", 8, seed=1), write_split(folder, "val", 3, seed=2)
    result = run_cli(["task=vqa", "model=tiny", f"data.train_file={train}", f"data.val_file={val}",
                      "train.epochs=1", f"paths.cache_dir={cache_dir}"], cwd=folder, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("vqa").experiment_id])
    (samples,) = (folder / "outputs").rglob("vqa_samples.csv")
    rows = list(csv.DictReader(samples.open()))
    return Path(run.data.tags["vlmexp.work_dir"]) / "checkpoint", run.info.run_id, env["MLFLOW_TRACKING_URI"], rows


def test_load_vlm_answers_as_evaluation_did(trained):
    from vlmexp import load_vlm

    checkpoint, _, _, rows = trained
    vlm = load_vlm(checkpoint)
    try:
        answers = [vlm.answer_question(r["image"], r["question"]) for r in rows]
        assert answers == [r["prediction"].strip() for r in rows]
        assert vlm.answer_question([r["image"] for r in rows], [r["question"] for r in rows]) == answers
    finally:
        vlm.close()


def test_load_vlm_from_the_mlflow_run_id(trained):
    from vlmexp import load_vlm

    _, run_id, uri, rows = trained
    vlm = load_vlm(run_id, tracking_uri=uri)
    try:
        assert vlm.answer_question(rows[0]["image"], rows[0]["question"]) == rows[0]["prediction"].strip()
        image = Image.new("RGB", (96, 96))
        # the annotate task's description question, the box as Qwen2.5-VL's processor sees 96 x 96 px (84 x 84)
        assert vlm._describe(image, [6, 6, 26, 26], "glass") == "Describe the glass at [5, 5, 23, 23]."
        described = vlm.describe_object([image, image], [[6, 6, 26, 26], [40, 40, 90, 90]], ["glass", "can"])
        assert len(described) == 2 and all(isinstance(d, str) for d in described)
        assert described[0] == vlm.describe_object(image, [6, 6, 26, 26], "glass")
    finally:
        vlm.close()


def test_load_vlm_of_an_unknown_source_is_one_line(tmp_path):
    from vlmexp import load_vlm

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigError) as err:
        load_vlm("no-such-run", tracking_uri=uri)
    assert str(err.value) == f"no-such-run: neither a checkpoint folder nor a run in the MLflow store {uri}"
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(ConfigError, match="no resolved_config.yaml beside it"):
        load_vlm(tmp_path / "ckpt")
