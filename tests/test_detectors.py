"""Detector plugins: the labels detector on generated shapes, fusion and class mapping on scripted
detections (exact values), and the real ultralytics and transformers RT-DETR classes on checkpoints
built here from small configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.detector_checkpoints import build_rtdetr_folders, build_yolo_weights
from tests.shapes import write_shapes_set
from vlmexp.detectors.base import DetectorError, DetectorInput, build_plugin

SCRIPTED = "tests.scripted_detector.ScriptedDetector"


def _inputs(root: Path, names: list[str]) -> list[DetectorInput]:
    return [DetectorInput(root / n, Image.open(root / n).convert("RGB")) for n in names]


def test_labels_detector_gives_the_generated_boxes_in_pixels(tmp_path):
    truth = write_shapes_set(tmp_path, 6, seed=3)
    node = OmegaConf.create({"_target_": "vlmexp.detectors.labels.LabelsDetector", "root": str(tmp_path)})
    detector = build_plugin(node, None)
    assert detector.classes() == ["red square", "blue circle", "green triangle"]
    found = detector.detect(_inputs(tmp_path, list(truth)))
    for (name, objects), detections in zip(truth.items(), found):
        assert sorted((d.label, d.box) for d in detections) == sorted(objects), name
        assert all(d.score == 1.0 and d.sources == ["labels"] for d in detections)
    assert sum(len(v) for v in truth.values()) > 3


def test_labels_detector_without_class_names_is_one_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    node = OmegaConf.create({"_target_": "vlmexp.detectors.labels.LabelsDetector", "root": str(tmp_path)})
    with pytest.raises(DetectorError, match=r"no data.yaml or classes.txt"):
        build_plugin(node, None)


def _scripted(tmp_path) -> tuple[dict, list[DetectorInput]]:
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    Image.new("RGB", (200, 100)).save(tmp_path / "b.png")
    a = {"a.png": [{"box": [10, 10, 50, 50], "label": "glass", "score": 0.9},
                   {"box": [100, 20, 140, 60], "label": "plastic", "score": 0.8},
                   {"box": [150, 50, 160, 60], "label": "plastic", "score": 0.2}]}  # under 0.3: dropped
    b = {"a.png": [{"box": [12, 10, 52, 50], "label": "bottle", "score": 0.6},
                   {"box": [160, 10, 190, 40], "label": "can", "score": 0.5}],
         "b.png": [{"box": [0, 0, 20, 20], "label": "bottle", "score": 0.7}]}
    node = {"_target_": "vlmexp.detectors.ensemble.EnsembleDetector", "conf_threshold": 0.3,
            "class_map": {"bottle": "glass"},
            "detectors": {"a": {"_target_": SCRIPTED, "boxes": a, "names": ["glass", "plastic"]},
                          "b": {"_target_": SCRIPTED, "boxes": b, "names": ["bottle", "can"]}}}
    return node, _inputs(tmp_path, ["a.png", "b.png"])


def _rows(detections):
    return [(d.label, [round(v, 2) for v in d.box], round(d.score, 4), d.sources) for d in detections]


def test_weighted_boxes_fusion_of_mapped_classes(tmp_path):
    node, items = _scripted(tmp_path)
    node["fusion"] = {"_target_": "vlmexp.detectors.fusion.WeightedBoxesFusion", "iou_threshold": 0.55}
    detector = build_plugin(OmegaConf.create(node), None)
    assert detector.classes() == ["can", "glass", "plastic"]
    first, second = detector.detect(items)
    # glass: score-weighted mean box of 0.9 x [10,10,50,50] and 0.6 x [12,10,52,50]; mean score 0.75,
    # both detectors agree. plastic and can: one detector of two, so half their score.
    assert _rows(first) == [("glass", [10.8, 10.0, 50.8, 50.0], 0.75, ["a", "b"]),
                            ("plastic", [100.0, 20.0, 140.0, 60.0], 0.4, ["a"]),
                            ("can", [160.0, 10.0, 190.0, 40.0], 0.25, ["b"])]
    assert _rows(second) == [("glass", [0.0, 0.0, 20.0, 20.0], 0.35, ["b"])]


def test_class_wise_nms_keeps_the_best_box_and_who_agreed(tmp_path):
    node, items = _scripted(tmp_path)
    node["fusion"] = {"_target_": "vlmexp.detectors.fusion.ClassWiseNMS", "iou_threshold": 0.5}
    node["fused_threshold"] = 0.55
    first, second = build_plugin(OmegaConf.create(node), None).detect(items)
    assert _rows(first) == [("glass", [10, 10, 50, 50], 0.9, ["a", "b"]),
                            ("plastic", [100, 20, 140, 60], 0.8, ["a"])]  # can 0.5 < fused_threshold
    assert _rows(second) == [("glass", [0, 0, 20, 20], 0.7, ["b"])]


def test_class_map_naming_a_class_no_detector_has_is_one_line(tmp_path):
    node, _ = _scripted(tmp_path)
    node["class_map"] = {"cup": "glass"}
    node["fusion"] = {"_target_": "vlmexp.detectors.fusion.ClassWiseNMS"}
    with pytest.raises(DetectorError) as err:
        build_plugin(OmegaConf.create(node), None)
    assert str(err.value) == ("detector.class_map: 'cup' is not a class of any detector "
                              "(a: glass, plastic; b: bottle, can)")


@pytest.fixture(scope="module")
def yolo_weights(tmp_path_factory) -> Path:
    return build_yolo_weights(tmp_path_factory.mktemp("yolo"))


@pytest.fixture(scope="module")
def rtdetr_folders(tmp_path_factory) -> tuple[Path, Path]:
    return build_rtdetr_folders(tmp_path_factory.mktemp("rtdetr"))


def _random_images(tmp_path, n: int) -> list[DetectorInput]:
    import numpy as np

    items = []
    for i in range(n):
        path = tmp_path / f"r{i}.png"
        Image.fromarray((np.random.default_rng(i).random((64, 96, 3)) * 255).astype("uint8")).save(path)
        items.append(DetectorInput(path, Image.open(path).convert("RGB")))
    return items


def test_yolo_detector_runs_the_real_ultralytics_model(tmp_path, yolo_weights):
    import cv2  # ultralytics must not have broken opencv

    assert cv2.imread
    node = OmegaConf.create({"_target_": "vlmexp.detectors.yolo.UltralyticsDetector",
                             "weights": str(yolo_weights / "best.pt"), "conf_threshold": 0.0, "imgsz": 64,
                             "batch_size": 2})
    detector = build_plugin(node, None)
    assert detector.classes() == ["glass", "plastic"] and detector.device == "cpu"
    items = _random_images(tmp_path, 3)
    batched = detector.detect(items)
    assert len(batched) == 3 and all(batched)
    for found in batched:
        for d in found:
            assert d.label in {"glass", "plastic"} and d.sources == ["yolo"]
            assert 0 <= d.box[0] <= d.box[2] <= 96 and 0 <= d.box[1] <= d.box[3] <= 64
    detector.batch_size = 1
    assert [[(d.label, d.box) for d in f] for f in detector.detect(items)] == \
           [[(d.label, d.box) for d in f] for f in batched]


@pytest.mark.parametrize("name, message", [
    ("missing.pt", "detector weights {}/missing.pt: no such file"),
    ("classifier.pt", "detector weights {}/classifier.pt: an ultralytics 'classify' model, not a detector"),
    ("junk.pt", "detector weights {}/junk.pt: not an ultralytics detector checkpoint ("),
])
def test_bad_yolo_weights_are_one_line(yolo_weights, name, message):
    node = OmegaConf.create({"_target_": "vlmexp.detectors.yolo.UltralyticsDetector",
                             "weights": str(yolo_weights / name)})
    with pytest.raises(DetectorError) as err:
        build_plugin(node, None)
    assert str(err.value).startswith(message.format(yolo_weights)) and "\n" not in str(err.value)


def test_rtdetr_detector_runs_the_real_transformers_model(tmp_path, rtdetr_folders):
    model, processor = rtdetr_folders
    node = OmegaConf.create({"_target_": "vlmexp.detectors.rtdetr.RTDetrDetector", "model": str(model),
                             "processor": str(processor), "conf_threshold": 0.0, "batch_size": 3})
    detector = build_plugin(node, None)
    assert detector.classes() == ["glass", "plastic"]
    items = _random_images(tmp_path, 3)
    batched = detector.detect(items)
    assert [len(f) for f in batched] == [20, 20, 20]  # top num_queries at threshold 0
    assert all(d.label in {"glass", "plastic"} and d.sources == ["rtdetr"] for f in batched for d in f)
    detector.batch_size = 1
    one_by_one = detector.detect(items)
    for a, b in zip(batched, one_by_one):
        assert [d.label for d in a] == [d.label for d in b]
        assert all(abs(x - y) < 0.05 for da, db in zip(a, b) for x, y in zip(da.box, db.box))


def test_rtdetr_folder_that_is_not_a_model_is_one_line(tmp_path):
    (tmp_path / "m").mkdir()
    node = OmegaConf.create({"_target_": "vlmexp.detectors.rtdetr.RTDetrDetector", "model": str(tmp_path / "m")})
    with pytest.raises(DetectorError) as err:
        build_plugin(node, None)
    assert str(err.value).startswith(f"detector.model={tmp_path / 'm'}: cannot load an RT-DETR model (")
    assert "\n" not in str(err.value)


def test_ensemble_of_real_yolo_and_rtdetr(tmp_path, yolo_weights, rtdetr_folders):
    model, processor = rtdetr_folders
    node = OmegaConf.create({
        "_target_": "vlmexp.detectors.ensemble.EnsembleDetector", "conf_threshold": 0.0,
        "class_map": {"plastic": "glass"},
        "fusion": {"_target_": "vlmexp.detectors.fusion.WeightedBoxesFusion", "iou_threshold": 0.55},
        "detectors": {"yolo": {"_target_": "vlmexp.detectors.yolo.UltralyticsDetector",
                               "weights": str(yolo_weights / "best.pt"), "imgsz": 64},
                      "rtdetr": {"_target_": "vlmexp.detectors.rtdetr.RTDetrDetector", "model": str(model),
                                 "processor": str(processor)}}})
    detector = build_plugin(node, None)
    assert detector.classes() == ["glass"]
    found = detector.detect(_random_images(tmp_path, 2))
    assert all(found) and {d.label for f in found for d in f} == {"glass"}
    assert {s for f in found for d in f for s in d.sources} <= {"yolo", "rtdetr"}
    assert all(d.sources for f in found for d in f)


def test_label_files_are_found_where_the_smoke_layouts_keep_them(tmp_path):
    from vlmexp.detectors.labels import label_file

    assert label_file(tmp_path / "images" / "x.jpg", tmp_path) == tmp_path / "labels" / "x.txt"  # D-Fire
    assert label_file(tmp_path / "train" / "images" / "x.png", tmp_path) == tmp_path / "train" / "labels" / "x.txt"
    assert label_file(tmp_path / "seq1" / "f_+060.jpg", tmp_path) == tmp_path / "seq1" / "f_+060.txt"  # beside
    assert label_file(tmp_path / "images.jpg", tmp_path) == tmp_path / "images.txt"
