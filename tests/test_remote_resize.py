"""Remote engines send images resized to the model's pixel budget, as the HF processor resizes them,
and boxes answered in pixels (``bbox_2d``) are converted with the size actually sent."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config
from tests.fake_servers import FakeServer, Reply
from vlmexp.runner import run

TAG = "vlmexp-tiny:latest"


def box_in_the_middle(request) -> Reply:
    """A grounding answer in pixels of the image received: the middle half of it."""
    width, height = request.images[0].size
    text = json.dumps({"bbox_2d": [width / 4, height / 4, 3 * width / 4, 3 * height / 4], "size": [width, height]})
    return Reply(text, 10, 10)


@pytest.mark.parametrize("resize", [True, False])
def test_boxes_in_pixels_of_the_sent_image(resize, cache_dir, tmp_path):
    with FakeServer(box_in_the_middle, models=[TAG]) as server:
        cfg = compose_config(["task=smoke", "model=tiny", "mode=eval", f"paths.cache_dir={cache_dir}", "data.limit=3",
                              "logger=none", "engine=ollama", f"engine.host={server.ollama_host}",
                              f"engine.model_tag={TAG}", f"engine.resize={str(resize).lower()}"])
        run(cfg, output_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    # 160x120 frames, model=tiny's budget 3136..12544 pixels: smart_resize gives 112x84 (12 visual tokens),
    # what the HF processor gives; resize=false sends the frame as it is
    assert len(records) == 3
    for r in records:
        assert json.loads(r["raw"])["size"] == ([112, 84] if resize else [160, 120])
        assert r["pred_boxes"] == [pytest.approx([0.5, 0.5, 0.5, 0.5])]  # normalised with the size sent
