"""``python -m vlmexp task=annotate`` as a user runs it, on generated shapes with YOLO labels whose
objects are known: the boxes, counts, locations and boxes in every generated answer are checked exactly,
then the export trains ``task=vqa`` as it is (seed 003's two stages)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli
from tests.shapes import CELL, CLASSES, SIZE, write_shapes_set

CAPTION = "a shape on a plain background"
ROWS, COLUMNS = ["top", "middle", "bottom"], ["left", "centre", "right"]


def _plural(label: str) -> str:
    return label + "s"  # the generated class names end in square / circle / triangle


def _tiny_box(box: list[float]) -> list[int]:
    return [round(v * 84 / SIZE) for v in box]  # the tiny model sees 96 x 96 px as 84 x 84 (smart_resize)


def expected_pairs(objects: list[tuple[str, list[float]]]) -> list[tuple[str, str, str]]:
    """The Q&A pairs of an image, from what was drawn (negative existence questions aside: sampled)."""
    counts = Counter(label for label, _ in objects)
    unique = sorted((label, box) for label, box in objects if counts[label] == 1)
    pairs = [("existence", f"Is there a {c} in the image?", "yes") for c in sorted(counts)]
    pairs += [("count", f"How many {_plural(c)} are there?", str(counts[c])) for c in sorted(counts)]
    pairs += [("count", "How many objects are there?", str(len(objects)))]
    pairs += [("location", f"Where is the {label}?", f"{ROWS[int(box[1]) // CELL]} {COLUMNS[int(box[0]) // CELL]}")
              for label, box in unique]
    pairs += [("description", f"Describe the {label} at {json.dumps(_tiny_box(box))}.", CAPTION)
              for label, box in objects]
    pairs += [("grounding", f"Give the bounding box of the {label}.",
               json.dumps({"bbox_2d": _tiny_box(box), "label": label})) for label, box in unique]
    return pairs


def _annotate_args(root: Path, out: Path, cache: Path) -> list[str]:
    return ["task=annotate", f"data.root={root}", "detector=labels", "captioner=engine", "model=tiny",
            f"task.output_dir={out}", f"paths.cache_dir={cache}"]


def test_annotate_labelled_shapes_gives_exact_qa_and_a_registered_dataset(tmp_path):
    import mlflow

    root, out = tmp_path / "shapes", tmp_path / "export"
    truth = write_shapes_set(root, 10, seed=1)
    (root / "images" / "img_10.png").write_bytes(b"")  # unreadable: skipped and counted
    args = [*_annotate_args(root, out, tmp_path / "cache"), "engine._target_=tests.helpers.ScriptedEngine",
            f"+engine.default={CAPTION}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    annotations = json.loads((out / "annotations.json").read_text())
    entries = {e["image"]: e for e in annotations["images"]}
    assert sorted(entries) == sorted(truth)
    for image, objects in truth.items():
        entry = entries[image]
        assert (entry["width"], entry["height"]) == (SIZE, SIZE)
        assert sorted((o["label"], o["box"]) for o in entry["objects"]) == sorted(objects), image
        assert all(o["sources"] == ["labels"] and o["caption"] == CAPTION for o in entry["objects"])
        pairs = [(p["template"], p["question"], p["answer"]) for p in entry["qa"]]
        negatives = [p for p in pairs if p[0] == "existence" and p[2] == "no"]
        assert [p for p in pairs if p not in negatives] == expected_pairs(objects), image
        absent = [c for c in CLASSES if c not in {label for label, _ in objects}]
        assert len(negatives) == min(1, len(absent))
        assert all(q == f"Is there a {c} in the image?" for (_, q, _), c in zip(negatives, absent) if c in q)
        assert {q.split("a ", 1)[1].split(" in")[0] for _, q, _ in negatives} <= set(absent)
    assert sorted(Counter(e["split"] for e in entries.values()).items()) == [("test", 1), ("train", 8), ("val", 1)]

    (found,) = mlflow.search_runs(experiment_names=["annotate"], output_format="list")
    metrics = found.data.metrics
    boxes = Counter(label for objects in truth.values() for label, _ in objects)
    assert metrics["data/images"] == 10 and metrics["data/skipped_corrupt_images"] == 1
    assert {k.removeprefix("data/"): v for k, v in metrics.items() if k.startswith("data/boxes_")} == {
        f"boxes_{label}": float(n) for label, n in boxes.items()}
    assert metrics["data/qa_pairs"] == sum(len(e["qa"]) for e in entries.values())
    assert (metrics["data/train_images"], metrics["data/val_images"], metrics["data/test_images"]) == (8, 1, 1)
    produced = [d for d in found.inputs.dataset_inputs if d.dataset.name == "annotate-shapes"]
    (dataset_input,) = produced  # the export, besides the images read (a dataset per split)
    assert json.loads(dataset_input.dataset.profile)["images"] == 10
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(found.info.run_id)} >= {"gallery.png", "dataset"}
    (gallery,) = (tmp_path / "outputs").rglob("gallery.png")
    with Image.open(gallery) as sheet:  # the 9 images with objects, 4 to a row of 320 px tiles + 84 px of text
        assert sheet.size == (4 * 320, 3 * (320 + 84))
    assert {a.path for a in client.list_artifacts(found.info.run_id, "dataset")} == {
        f"dataset/{n}" for n in ("annotations.json", "train_llava.json", "val_llava.json", "test_llava.json",
                                 "train.jsonl", "val.jsonl", "test.jsonl")}

    # Another split reuses every image's detections and captions from the crash-safe store.
    rerun = run_cli([*args, "task.split.train=0.5", "task.split.val=0.2"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    newest = mlflow.search_runs(experiment_names=["annotate"], output_format="list", order_by=["start_time DESC"])[0]
    assert newest.data.tags["vlmexp.reused_predictions"] == "11"
    metrics = newest.data.metrics
    assert (metrics["data/train_images"], metrics["data/val_images"], metrics["data/test_images"]) == (5, 2, 3)
    again = json.loads((out / "annotations.json").read_text())["images"]
    assert [(e["objects"], e["qa"]) for e in again] == [(e["objects"], e["qa"]) for e in annotations["images"]]


def test_annotation_continues_where_an_earlier_run_stopped(tmp_path):
    root, out = tmp_path / "shapes", tmp_path / "export"
    write_shapes_set(root, 6, seed=4)
    args = [*_annotate_args(root, out, tmp_path / "cache"), "engine._target_=tests.helpers.ScriptedEngine",
            f"+engine.default={CAPTION}", f"+engine.call_log={tmp_path / 'calls.log'}"]
    first = run_cli([*args, "data.limit=2"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    asked_first = len((tmp_path / "calls.log").read_text().splitlines())
    second = run_cli(args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    entries = json.loads((out / "annotations.json").read_text())["images"]
    objects = [len(e["objects"]) for e in entries]
    # the first run captioned the objects of the first two images; the second only the others
    assert asked_first == sum(objects[:2])
    assert len((tmp_path / "calls.log").read_text().splitlines()) == sum(objects)


@pytest.mark.parametrize("override, message", [
    ("detector=yolo detector.weights={tmp}/missing.pt", "error: detector weights {tmp}/missing.pt: no such file"),
    ("task.split.train=0.9 task.split.val=0.2",
     "error: task.split: train 0.9 + val 0.2 = 1.1 is over 1 (the test split takes what is left)"),
    ("engine=none", "error: captioner=engine asks the run's engine about each object, but this engine serves "
                    "no model: choose engine=hf, ollama or openai (or captioner=blip)"),
    ("detector.names_file={tmp}/nope.yaml", "error: detector.names_file={tmp}/nope.yaml: no such file"),
])
def test_bad_annotate_input_is_one_line(tmp_path, override, message):
    root = tmp_path / "shapes"
    write_shapes_set(root, 2)
    args = [*_annotate_args(root, tmp_path / "out", tmp_path / "cache"), "logger=none",
            *override.format(tmp=tmp_path).split()]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == [message.format(tmp=tmp_path)]


@pytest.mark.slow
def test_annotate_with_the_tiny_model_then_fine_tune_on_the_export(tmp_path, cache_dir, tiny_checkpoint):
    """Seed 003's chain: annotate with the tiny model as captioner, then task=vqa on the export as it is."""
    root, out = tmp_path / "shapes", tmp_path / "export"
    write_shapes_set(root, 12, seed=5)
    args = [*_annotate_args(root, out, cache_dir), "captioner.max_new_tokens=8", "logger=none"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = json.loads((out / "annotations.json").read_text())["images"]
    assert all(o["caption"] for e in entries for o in e["objects"])  # the model answered for every object

    result = run_cli(["task=vqa", "data.format=llava", f"data.root={out}", "model=tiny", f"paths.cache_dir={cache_dir}",
                      "train.epochs=2", "logger=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    held_out = [p for e in entries if e["split"] in ("val", "test") for p in e["qa"]]
    (samples_csv,) = Path(tmp_path, "outputs", "vqa").rglob("vqa_samples.csv")
    rows = list(csv.DictReader(samples_csv.open()))
    assert sorted((r["question"], r["answer"]) for r in rows) == sorted((p["question"], p["answer"]) for p in held_out)
    asked = {(p["question"]) for p in held_out if p["template"] in ("count", "existence")}
    scored = [r["correct"] == "True" for r in rows if r["question"] in asked]
    print(f"held-out exact match on count and existence questions: {sum(scored) / len(scored):.3f} "
          f"({sum(scored)} of {len(scored)})")


def test_annotate_with_an_ensemble_of_real_detectors(tmp_path):
    """``detector=ensemble`` from the command line: ultralytics YOLOv8n and transformers RT-DETR (random
    weights, threshold 0 so boxes exist) fused with WBF, their classes mapped onto one vocabulary."""
    import mlflow

    from tests.detector_checkpoints import build_rtdetr_folders, build_yolo_weights

    weights = build_yolo_weights(tmp_path / "yolo") / "best.pt"
    model, processor = build_rtdetr_folders(tmp_path / "rtdetr")
    root, out = tmp_path / "shapes", tmp_path / "export"
    write_shapes_set(root, 3, seed=1)
    result = run_cli([*_annotate_args(root, out, tmp_path / "cache"), "detector=ensemble",
                      f"detector.detectors.yolo.weights={weights}", "detector.detectors.yolo.imgsz=64",
                      f"detector.detectors.rtdetr.model={model}", f"detector.detectors.rtdetr.processor={processor}",
                      "detector.conf_threshold=0.0", "+detector.class_map.plastic=glass",
                      "engine._target_=tests.helpers.ScriptedEngine", f"+engine.default={CAPTION}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = json.loads((out / "annotations.json").read_text())["images"]
    objects = [o for e in entries for o in e["objects"]]
    assert objects and {o["label"] for o in objects} == {"glass"}
    assert all(set(o["sources"]) <= {"yolo", "rtdetr"} and o["sources"] for o in objects)
    assert all(0 <= o["box"][0] <= o["box"][2] <= SIZE and 0 <= o["box"][1] <= o["box"][3] <= SIZE for o in objects)
    (found,) = mlflow.search_runs(experiment_names=["annotate"], output_format="list")
    assert found.data.metrics["data/boxes_glass"] == len(objects)


@pytest.mark.parametrize("engine", ["ollama", "openai"])
def test_annotate_captions_through_a_remote_engine(tmp_path, engine):
    """captioner=engine with engine=ollama / openai: each object is one chat request to the server, with the
    image (its box drawn) and the class's prompt; the answer is the object's caption."""
    from tests.fake_servers import FakeServer, Reply

    def prompt_back(request):  # the server answers with the question it was asked
        return Reply(f"asked: {request.messages[-1].text}", 10, 5)

    root, out = tmp_path / "shapes", tmp_path / "export"
    truth = write_shapes_set(root, 3, seed=1)
    with FakeServer(prompt_back, models=["qwen2.5vl:7b", "Qwen/Qwen2.5-VL-7B-Instruct"]) as server:
        where = (f"engine.host={server.ollama_host}" if engine == "ollama"
                 else f"engine.base_url={server.openai_base_url}")
        result = run_cli(["task=annotate", f"data.root={root}", "model=qwen7b", f"engine={engine}", where,
                          "++captioner.prompts={red square: 'a red square. What is next to it?'}",
                          f"task.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"],
                         cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(server.chats) == sum(len(v) for v in truth.values())
    entries = json.loads((out / "annotations.json").read_text())["images"]
    for entry in entries:
        for obj in entry["objects"]:
            prompt = ("a red square. What is next to it?" if obj["label"] == "red square"
                      else f"a {obj['label']}. Describe where it is.")
            assert obj["caption"] == f"asked: The red box marks {prompt}"
