"""The real tiny Qwen2.5-VL through the HF engine: video and multi-image inputs, and task=sentiment
in every frame mode with both decisions."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from tests.conftest import compose_config
from tests.sentiment_set import make_golden_set
from vlmexp.engines.hf import HFEngine
from vlmexp.hardware import Placement
from vlmexp.messages import ChatRequest, ImagePart, TextPart, VideoPart, chat
from vlmexp.models.loading import load_model, load_processor
from vlmexp.runner import run
from vlmexp.tasks.sentiment_answers import parse_label, softmax


@pytest.fixture(scope="module")
def tiny_engine(tiny_checkpoint, cache_dir):
    model_cfg = compose_config([f"paths.cache_dir={cache_dir}"]).model
    processor = load_processor(tiny_checkpoint, model_cfg)
    model = load_model(tiny_checkpoint, model_cfg, Placement("cpu", "float32", "sdpa", None))
    return HFEngine(batch_size=4, max_new_tokens=3, model=model, processor=processor)


def _frames(n: int, size: int = 56, shade: int = 0) -> list:
    return [Image.new("RGB", (size, size), (i * 40 + shade, 120, 60)) for i in range(n)]


def test_video_part_uses_the_processor_video_path(tiny_engine):
    engine = tiny_engine
    request = ChatRequest(chat(None, VideoPart(_frames(4), fps=2.0), TextPart("Positive or Negative?")))
    inputs = engine._encode([engine._prompt_text(request)], [request], "left")
    assert "pixel_values_videos" in inputs and "pixel_values" not in inputs
    # 4 frames -> 2 temporal patches of 2; 56 px -> 4 x 4 patches of 14 px; 2 x 2 patches merge into one token
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]
    assert int((inputs["input_ids"] == engine.processor.video_token_id).sum()) == 2 * 4 * 4 // 4
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(1.0)]  # 2 frames per patch at 2 fps

    slower = ChatRequest(chat(None, VideoPart(_frames(4, shade=10), fps=0.5), TextPart("Positive or Negative?")))
    both = engine._encode([engine._prompt_text(r) for r in (request, slower)], [request, slower], "left")
    assert both["second_per_grid_ts"].tolist() == [pytest.approx(1.0), pytest.approx(4.0)]

    generations = engine.generate([request, slower])
    assert len(generations) == 2
    assert generations[0].prompt_tokens == int(inputs["attention_mask"].sum())
    scores = engine.score([request, slower], ["Positive", "Negative"])
    assert len(scores) == 2 and all(len(row) == 2 and all(s < 0 for s in row) for row in scores)


def test_multi_image_request_and_mixed_batch(tiny_engine):
    engine = tiny_engine
    frames = ChatRequest(chat(None, *[ImagePart(f) for f in _frames(3)], TextPart("Positive or Negative?")))
    video = ChatRequest(chat(None, VideoPart(_frames(2), fps=1.0), TextPart("Positive or Negative?")))
    inputs = engine._encode([engine._prompt_text(frames)], [frames], "left")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    generations = engine.generate([frames, video])
    assert generations[0].image_sizes == [(56, 56)] * 3 and generations[1].image_sizes == []
    assert len(engine.score([frames, video], ["Positive", "Negative"])) == 2


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    return make_golden_set(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("frame_mode", ["center", "frames", "video"])
@pytest.mark.parametrize("decision", ["score", "generate"])
def test_sentiment_with_tiny_model(golden, cache_dir, tiny_checkpoint, tmp_path, frame_mode, decision):
    cfg = compose_config(["task=sentiment", f"data.root={golden}", f"paths.cache_dir={cache_dir}", "hardware=cpu",
                          "logger=none", f"task.frame_mode={frame_mode}", f"task.decision={decision}",
                          "task.num_frames=4", "task.frame_size=56", "task.max_new_tokens=4", "data.limit=3"])
    out = tmp_path / "out"
    metrics = run(cfg, output_dir=out)
    assert (metrics["num_samples"], metrics["skipped_unreadable_videos"]) == (2.0, 1.0)  # v1, v2; missing.mp4 skipped
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if not r.get("skipped")]
    assert [r["id"] for r in evaluated] == ["v1.mp4", "v2.avi"]
    for record in evaluated:
        assert record["decision"] == decision and record["frame_indices"] == [0, 4, 7, 11]
        if decision == "score":
            probs = softmax(list(record["scores"].values()))
            assert record["predicted_label"] == max(record["scores"], key=record["scores"].get)
            assert record["confidence"] == pytest.approx(max(probs)) and record["confidence"] >= 0.5
        else:
            parsed = parse_label(record["raw"], ("Positive", "Negative"), cfg.task.lexicon)
            assert record["parse_ok"] == (parsed.label is not None)
            assert record["predicted_label"] == (parsed.label or "Negative")
    with (out / "results.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["video_name", "true_label", "predicted_label", "confidence", "caption", "correct_prediction"]
    assert [r[2] for r in rows[1:]] == [r["predicted_label"] for r in evaluated]
    assert metrics["parse_success_rate"] == sum(r["parse_ok"] for r in evaluated) / 2
    if decision == "generate":
        assert metrics["prompt_tokens_total"] > 0
