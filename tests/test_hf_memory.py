"""CUDA out-of-memory handling of the HF engine, on CPU: the real engine and tiny model, with a real
``torch.OutOfMemoryError`` raised by the model's forward pass above a number of rows."""

from __future__ import annotations

import json
import logging

import mlflow
import pytest
from PIL import Image

from tests.capped_engines import MemoryCappedHFEngine
from tests.conftest import compose_config
from tests.sentiment_set import make_golden_set
from vlmexp.engines.hf import HFEngine
from vlmexp.errors import ConfigError, EngineError
from vlmexp.hardware import Placement
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.models.loading import load_model, load_processor
from vlmexp.runner import RunContext, run
from vlmexp.tracking.null import NullTracker


@pytest.fixture
def tiny(tiny_checkpoint, cache_dir):
    """A freshly loaded tiny model (a test's injected hook never reaches another test)."""
    model_cfg = compose_config([f"paths.cache_dir={cache_dir}"]).model
    processor = load_processor(tiny_checkpoint, model_cfg)
    return load_model(tiny_checkpoint, model_cfg, Placement("cpu", "float32", "sdpa", None)), processor


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(chat(None, ImagePart(Image.new("RGB", (56, 56), (i * 50, 90, 200 - i * 40))),
                             TextPart("Positive or Negative?"))) for i in range(n)]


def test_generate_halves_the_batch_and_retries_the_same_requests(tiny):
    model, processor = tiny
    requests = _requests(5)
    expected = HFEngine(batch_size=2, max_new_tokens=3, model=model, processor=processor).generate(requests)
    engine = MemoryCappedHFEngine(max_rows=2, batch_size=8, max_new_tokens=3, model=model, processor=processor)
    got = engine.generate(requests)
    engine.close()
    assert [g.text for g in got] == [g.text for g in expected]
    # after the one-row pass of the prompts' shared start, the first pass (5 rows) runs out of memory;
    # the same 5 requests then go 2 + 2 + 1 (each batch of 2 after its own one-row shared start)
    assert engine.forward_rows[:2] == [1, 5] and sorted(set(engine.forward_rows[2:])) == [1, 2]
    assert engine.batch_size == 2 and engine.preferred_batch_size() == 2
    assert engine.run_metrics()["oom_retries"] == 1.0


def test_score_halves_down_to_one_request(tiny):
    model, processor = tiny
    requests = _requests(3)
    expected = HFEngine(batch_size=8, model=model, processor=processor).score(requests, ["Positive", "Negative"])
    engine = MemoryCappedHFEngine(max_rows=2, batch_size=8, model=model, processor=processor)
    got = engine.score(requests, ["Positive", "Negative"])
    engine.close()
    assert got == [pytest.approx(row, abs=1e-4) for row in expected]
    # the prompts' shared start (1 row), then the prompt pass of 3 requests fails; then per request its
    # prompt, then each candidate (1 row each)
    assert engine.forward_rows == [1, 3] + [1, 1, 1] * 3
    assert engine.run_metrics()["oom_retries"] == 1.0


def test_out_of_memory_at_batch_one_without_fallback_is_one_clear_error(tiny):
    model, processor = tiny
    engine = MemoryCappedHFEngine(max_rows=0, batch_size=4, model=model, processor=processor)
    with pytest.raises(EngineError) as err:
        engine.generate(_requests(2))
    engine.close()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("CUDA out of memory at batch size 1 (CUDA out of memory. Tried to allocate 2.00 GiB")
    assert "which it does not replace" in message
    assert engine.forward_rows == [1, 1]  # the 2 prompts' shared start (1 row), then one request


class TagRecorder(NullTracker):
    """Keeps the tags it is given (the MLflow side is checked in the end-to-end test below)."""

    def __init__(self):
        self.tags: dict[str, str] = {}

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)


def _context(tmp_path, cache_dir, *overrides: str, tracker=None) -> RunContext:
    cfg = compose_config([f"paths.cache_dir={cache_dir}", "hardware=cpu", *overrides])
    tracker = tracker or NullTracker()
    tracker.start("fallback-test")
    return RunContext(cfg, tmp_path, tmp_path, tracker, "fingerprint")


def test_out_of_memory_while_loading_switches_to_the_fallback(tmp_path, cache_dir, tiny_checkpoint, caplog):
    ctx = _context(tmp_path, cache_dir, "model.name=tiny_big", "model.fallback=tiny", tracker=TagRecorder())
    engine = MemoryCappedHFEngine(capped_model="tiny_big", fail_loading=True, run=ctx)
    assert engine.model_cfg.name == "tiny" and engine.model is not None
    assert len(engine.generate(_requests(1))) == 1
    tags = ctx.tracker.tags
    assert tags["vlmexp.model_fallback"] == "tiny_big -> tiny" and tags["vlmexp.model_used"] == "tiny"
    assert tags["vlmexp.model_fallback_reason"].startswith("CUDA out of memory while loading")
    assert "model=tiny_big: CUDA out of memory while loading" in caplog.text
    assert "switching to model.fallback=tiny" in caplog.text


def test_fallback_config_errors_are_caught_early(tmp_path, cache_dir):
    with pytest.raises(ConfigError, match=r"model\.fallback=tiny_xl: no such model config \(known: .*tiny"):
        HFEngine(run=_context(tmp_path, cache_dir, "model.fallback=tiny_xl"))
    ctx = _context(tmp_path, cache_dir, "model.fallback=tiny")  # falls back to itself
    with pytest.raises(EngineError, match=r"model\.fallback=tiny was already tried \(tiny\)"):
        MemoryCappedHFEngine(capped_model="tiny", fail_loading=True, run=ctx)


def test_sentiment_run_falls_back_at_batch_one_and_records_it(tmp_path, cache_dir, tiny_checkpoint, caplog):
    """engine=hf on model 'tiny_big' whose every forward pass runs out of memory: the batch halves to
    one video, then the run switches to model.fallback=tiny, finishes, and says so in tags and log."""
    caplog.set_level(logging.WARNING)
    root = make_golden_set(tmp_path / "golden")
    common = ["task=sentiment", f"data.root={root}", f"paths.cache_dir={cache_dir}", "hardware=cpu",
              "task.num_frames=2", "task.frame_size=56", "data.limit=4"]
    cfg = compose_config([*common, "model.name=tiny_big", "model.fallback=tiny",
                          "engine._target_=tests.capped_engines.MemoryCappedHFEngine", "+engine.max_rows=0",
                          "+engine.capped_model=tiny_big"])
    metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["num_samples"] == 3.0 and metrics["oom_retries"] == 2.0  # one halving, one switch
    (logged,) = mlflow.search_runs(experiment_names=["sentiment"], output_format="list")
    assert logged.data.tags["vlmexp.model_fallback"] == "tiny_big -> tiny"
    assert logged.data.tags["vlmexp.model_fallback_after_requests"] == "0"
    assert logged.data.tags["vlmexp.model"] == "tiny_big"  # what was asked for stays recorded
    assert "retrying them 1 at a time" in caplog.text and "switching to model.fallback=tiny" in caplog.text

    # The fallback's answers are the tiny model's own: the same as a run asking for tiny directly.
    plain = run(compose_config([*common, "logger=none"]), output_dir=tmp_path / "plain")
    assert plain["accuracy"] == metrics["accuracy"]
    fell_back = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    direct = [json.loads(line) for line in (tmp_path / "plain" / "predictions.jsonl").read_text().splitlines()]
    assert [r.get("scores") for r in fell_back] == [
        pytest.approx(r["scores"], abs=1e-4) if "scores" in r else None for r in direct]


def test_prediction_loop_follows_an_engine_that_lowers_its_batch(tmp_path):
    """After an out-of-memory halving the loop hands the task smaller batches, so the crash-safe
    store is written at the engine's new pace."""
    from tests.helpers import ScriptedEngine
    from vlmexp.evaluation.loop import PredictionLoop
    from vlmexp.evaluation.store import PredictionStore
    from vlmexp.tasks.base import Splits, Task

    class Halving(ScriptedEngine):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.batches: list[int] = []

        def generate(self, requests):
            self.batches.append(len(requests))
            self.batch_size = max(1, self.batch_size // 2)
            return super().generate(requests)

    class Echo(Task):
        def __init__(self):
            super().__init__("echo")

        def load_splits(self, run):
            return Splits(None, None, None)

        def predict(self, engine, samples):
            engine.generate([ChatRequest(chat(None, TextPart(s.id))) for s in samples])
            return [{"id": s.id} for s in samples]

        def compute_metrics(self, records):
            return {}

    class Sample:
        def __init__(self, i):
            self.id = f"s{i}"

    samples, engine = [Sample(i) for i in range(15)], Halving(batch_size=8)
    store, sizes = PredictionStore(tmp_path / "p.jsonl"), []
    real_append = store.append
    store.append = lambda records: sizes.append(len(records)) or real_append(records)
    records = PredictionLoop().run(Echo(), engine, samples, store)
    # the next batch, built ahead at the old size, is cut again at the new one
    assert engine.batches == [8, 4, 2, 1] and sizes == [8, 4, 2, 1]
    assert [r["id"] for r in records] == [s.id for s in samples]
