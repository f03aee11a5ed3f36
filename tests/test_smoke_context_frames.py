"""task.context_frames: the last N frames of a sequence (the current one last) in one request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config
from tests.helpers import ScriptedEngine, image_key
from tests.smoke_fixtures import noise_image
from vlmexp.data.images import open_image
from vlmexp.evaluation.loop import PredictionLoop
from vlmexp.evaluation.store import PredictionStore
from vlmexp.messages import ImagePart, TextPart, chat
from vlmexp.provenance import config_fingerprint
from vlmexp.runner import RunContext
from vlmexp.summary import prompt_hash
from vlmexp.tracking.null import NullTracker

NO = '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'
SEQUENCES = {"s1": ["f1", "f2", "f3", "f4"], "s2": ["f1", "f2"]}


@pytest.fixture
def root(tmp_path) -> Path:
    seed = 0
    for sequence, frames in SEQUENCES.items():
        (tmp_path / "data" / sequence).mkdir(parents=True)
        for frame in frames:
            noise_image(tmp_path / "data" / sequence / f"{frame}.png", (96, 64), seed)
            seed += 1
    return tmp_path / "data"


def _evaluate(root: Path, tmp_path: Path, *overrides: str) -> tuple[object, ScriptedEngine, list[dict]]:
    cfg = compose_config(["mode=eval", f"data.root={root}", f"paths.cache_dir={tmp_path / 'c'}", "logger=none",
                          *overrides])
    task = instantiate(cfg.task, _recursive_=False)
    samples = task.load_splits(RunContext(cfg, tmp_path / "out", tmp_path / "work", NullTracker(), "test")).test
    engine = ScriptedEngine(default=NO, batch_size=2)  # batches of 2: the context crosses batches
    records = PredictionLoop(batch_size=2).run(task, engine, samples, PredictionStore(tmp_path / "p.jsonl"))
    return task, engine, records


def _key(sequence: str, frame: str, root: Path) -> str:
    return image_key(open_image(root / sequence / f"{frame}.png"))


def test_each_request_holds_the_last_n_frames_in_order(root, tmp_path):
    task, engine, records = _evaluate(root, tmp_path, "task.context_frames=3")
    sent = [[image_key(i) for i in r.images] for r in engine.calls]
    k = {f"{s}/{f}": _key(s, f, root) for s, frames in SEQUENCES.items() for f in frames}
    assert sent == [[k["s1/f1"]], [k["s1/f1"], k["s1/f2"]], [k["s1/f1"], k["s1/f2"], k["s1/f3"]],
                    [k["s1/f2"], k["s1/f3"], k["s1/f4"]],  # a full window: the oldest frame drops out
                    [k["s2/f1"]], [k["s2/f1"], k["s2/f2"]]]  # a new sequence starts again from one frame
    texts = [r.messages[-1].text for r in engine.calls]
    assert texts[0] == task.user_prompt
    assert texts[1] == ("These are the last 2 frames of one camera, oldest first; answer for the last one. "
                        + task.user_prompt)
    assert texts[3].startswith("These are the last 3 frames")
    by_id = {r["id"]: r for r in records}
    assert by_id["s1/f4.png"]["context"] == ["s1/f2.png", "s1/f3.png"] and by_id["s2/f1.png"]["context"] == []
    assert all(r["parse_ok"] and not r["pred"] for r in records)


def test_robust_copies_send_their_own_perturbed_frames(root, tmp_path):
    task, engine, records = _evaluate(root, tmp_path, "task.context_frames=2", "task.robustness=true")
    by_id = {r["id"]: r for r in records}
    assert by_id["robust/s1/f2.png"]["context"] == ["robust/s1/f1.png"]
    [request] = [c for c in engine.calls
                 if image_key(c.images[-1]) == image_key(task.image_as_sent(root / "s1" / "f2.png",
                                                                            by_id["robust/s1/f2.png"]["perturb_seed"])[0])]
    earlier = task.image_as_sent(root / "s1" / "f1.png", by_id["robust/s1/f1.png"]["perturb_seed"])[0]
    assert [image_key(i) for i in request.images] == [image_key(earlier), image_key(request.images[-1])]


def test_one_frame_is_the_request_and_fingerprint_of_before(root, tmp_path):
    task, engine, records = _evaluate(root, tmp_path)
    first = open_image(root / "s1" / "f1.png")
    assert engine.calls[0].messages == chat(task.system_prompt, ImagePart(first), TextPart(task.user_prompt))
    assert all(len(r.images) == 1 for r in engine.calls) and not any("context" in r for r in records)
    base = ["mode=eval", f"data.root={root}"]
    before = compose_config([*base, "~task.context_frames", "~task.context_prompt"])  # the config without the keys
    assert config_fingerprint(compose_config(base), "eval") == config_fingerprint(before, "eval")
    assert prompt_hash(compose_config(base).task) == prompt_hash(before.task)
    assert config_fingerprint(compose_config([*base, "task.context_frames=2"]), "eval") != config_fingerprint(
        before, "eval")


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_bad_context_frames_is_one_line(root, tmp_path, value):
    from vlmexp.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"^task.context_frames={value}: expected a whole number >= 1$"):
        _evaluate(root, tmp_path, f"task.context_frames={value}")


def test_the_tiny_model_reads_every_frame_sent(cache_dir, tmp_path):
    """engine=hf with the real tiny model: each extra 160 x 120 frame adds its 12 image tokens (112 x 84 after
    the processor) and its <|vision_start|>, <|vision_end|>; the first extra one also the context prompt's 41."""
    from vlmexp.runner import run

    run(compose_config(["task=smoke", "mode=eval", "engine=hf", "task.context_frames=3", "data.limit=4",
                        f"paths.cache_dir={cache_dir}", "logger=none", "eval.bootstrap=0", "resume=false"]),
        output_dir=tmp_path / "out")
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [len(r["context"]) for r in records] == [0, 1, 2, 2]
    assert [r["prompt_tokens"] for r in records] == [126, 126 + 14 + 41, 126 + 2 * 14 + 41, 126 + 2 * 14 + 41]
