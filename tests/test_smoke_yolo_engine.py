"""engine=yolo: a real ultralytics YOLOv8n (random weights, built from its model YAML) answering task=smoke
in the JSON contract, scored with the same metrics as a VLM."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, run_cli
from tests.detector_checkpoints import build_yolo_detector
from tests.smoke_fixtures import noise_image
from vlmexp.data.images import open_image
from vlmexp.detectors.base import Detection, DetectorInput, build_plugin
from vlmexp.engines.detector import smoke_answer
from vlmexp.errors import VlmexpError
from vlmexp.runner import run
from vlmexp.tasks.smoke_contract import parse_smoke_answer

SMOKE_CLASSES = {0: "smoke", 1: "fire"}
# (sequence, frame, smoke box or None): two sequences of three frames
FRAMES = [("s1", "f1", None), ("s1", "f2", [0.5, 0.5, 0.4, 0.4]), ("s1", "f3", [0.5, 0.5, 0.5, 0.5]),
          ("s2", "f1", None), ("s2", "f2", None), ("s2", "f3", [0.3, 0.6, 0.3, 0.3])]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_yolo_detector(tmp_path_factory.mktemp("yolo") / "best.pt", SMOKE_CLASSES)


def write_frames(root: Path) -> list[Path]:
    paths = []
    for seed, (sequence, frame, box) in enumerate(FRAMES):
        (root / sequence).mkdir(parents=True, exist_ok=True)
        path = root / sequence / f"{frame}.png"
        noise_image(path, (96, 64), seed, box)
        path.with_suffix(".txt").write_text(f"0 {' '.join(map(str, box))}\n" if box else "")
        paths.append(path)
    return paths


def test_the_most_confident_smoke_box_in_the_contract():
    found = [Detection([10, 20, 50, 60], "fire", 0.99), Detection([0, 0, 20, 10], "smoke", 0.4),
             Detection([40, 30, 80, 70], "smoke", 0.7)]
    text = smoke_answer(found, {"smoke"}, (80, 100))
    assert json.loads(text) == {"has_smoke": True, "bbox": [0.75, 0.5, 0.5, 0.4], "confidence": 0.7}
    answer = parse_smoke_answer(text)
    assert (answer.parse_ok, answer.has_smoke, answer.boxes, answer.confidence) == (True, True,
                                                                                    [[0.75, 0.5, 0.5, 0.4]], 0.7)
    no = parse_smoke_answer(smoke_answer(found[:1], {"smoke"}, (80, 100)))
    assert (no.parse_ok, no.has_smoke, no.boxes) == (True, False, [])


def test_a_smoke_run_on_the_real_detector(weights, tmp_path):
    paths = write_frames(tmp_path / "data")
    args = ["task=smoke", "mode=eval", "engine=yolo", f"engine.detector.weights={weights}",
            "engine.smoke_classes=[smoke]", "engine.detector.conf_threshold=0.001", "engine.detector.imgsz=64",
            f"data.root={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}", "eval.bootstrap=50",
            "hydra.run.dir=out"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [f"{s}/{f}.png" for s, f, _ in FRAMES]

    # The same detector, asked directly, decides every record.
    detector = build_plugin(OmegaConf.create({"_target_": "vlmexp.detectors.yolo.UltralyticsDetector",
                                              "weights": str(weights), "conf_threshold": 0.001, "imgsz": 64}), None)
    direct = detector.detect([DetectorInput(p, open_image(p)) for p in paths])
    for record, found, (_, _, box) in zip(records, direct, FRAMES):
        smoke = [d for d in found if d.label == "smoke"]
        assert record["parse_ok"] and record["truth"] == (box is not None)
        assert record["pred"] == bool(smoke)
        if smoke:
            best = max(smoke, key=lambda d: d.score)
            x1, y1, x2, y2 = best.box
            assert record["pred_boxes"] == [pytest.approx([(x1 + x2) / 192, (y1 + y2) / 128, (x2 - x1) / 96,
                                                           (y2 - y1) / 64], abs=1e-5)]
            assert record["confidence"] == pytest.approx(best.score, abs=1e-5)
    assert any(r["pred"] for r in records)  # the low threshold leaves boxes to score

    # The metrics are the task's own, from these records: counts worked out from them.
    tp = sum(r["pred"] and r["truth"] for r in records)
    fp = sum(r["pred"] and not r["truth"] for r in records)
    fn = sum(not r["pred"] and r["truth"] for r in records)
    [logged] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    metrics = logged.data.metrics
    assert metrics["test/parse_success_rate"] == 1.0 and metrics["data/num_samples"] == 6
    assert metrics["test/f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert metrics["test/recall"] == pytest.approx(tp / 3)
    for key in ("test/f1_ci_low", "test/f1_ci_high", "test/early_fire_score", "test/ttd_frames_mean", "test/mean_iou",
                "test/map_iou40"):
        assert key in metrics, key
    assert logged.data.tags["vlmexp.model_identity.checkpoint"] == "best.pt"


@pytest.mark.parametrize("extra, message", [
    ([], "engine.detector.weights is not set (e.g. engine.detector.weights=best.pt)"),
    (["engine.detector.weights={w}", "engine.smoke_classes=[flame]"],
     "engine.smoke_classes: 'flame' is not a class of the detector (its classes: smoke, fire)"),
    (["engine.detector.weights={w}", "+engine.detector.colour=red"],
     "engine.detector.colour: unknown key for UltralyticsDetector"),
])
def test_bad_detector_settings_are_one_line(weights, tmp_path, extra, message):
    write_frames(tmp_path / "data")
    cfg = compose_config(["task=smoke", "mode=eval", "engine=yolo", f"data.root={tmp_path / 'data'}", "logger=none",
                          f"paths.cache_dir={tmp_path / 'cache'}", *(e.format(w=weights) for e in extra)])
    with pytest.raises(VlmexpError) as err:
        run(cfg, output_dir=tmp_path / "out")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
