"""The evaluation loop builds (and encodes) the next batch while the engine answers the current one:
the engine sees the same calls in the same order, the predictions are the same, a failure stops
before the next batch reaches the engine, and a rerun resumes."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from tests.helpers import ScriptedEngine
from tests.test_hf_engine import lively_model, requests  # noqa: F401  (the fixture)
from vlmexp.engines.hf import HFEngine
from vlmexp.evaluation.loop import PredictionLoop
from vlmexp.evaluation.store import PredictionStore
from vlmexp.messages import ChatRequest, TextPart, chat


@dataclass
class Item:
    id: str


class TextTask:
    """One request per sample; records which batches were being built, from which thread."""

    def __init__(self):
        self.built: list[list[str]] = []
        self.threads: set[str] = set()
        self.next_built = threading.Event()
        self.engine_names: set[str] = set()

    def predict(self, engine, samples):
        self.built.append([s.id for s in samples])
        self.threads.add(threading.current_thread().name)
        self.engine_names.add(getattr(engine, "__name__", type(engine).__name__))  # as tasks name it in errors
        if len(self.built) >= 2:
            self.next_built.set()
        requests = [ChatRequest(chat(None, TextPart(f"q-{s.id}"))) for s in samples]
        return [{"id": s.id, "text": g.text, "error": g.error} for s, g in zip(samples, engine.generate(requests))]


class WaitingEngine(ScriptedEngine):
    """Its first call waits (up to 10 s) for the task to start building the second batch: that only
    happens if the loop prepares the next batch while the engine answers the current one."""

    def __init__(self, task: TextTask, **kwargs):
        super().__init__(**kwargs)
        self.task = task
        self.overlapped: bool | None = None
        self.threads: set[str] = set()

    def generate(self, requests):
        self.threads.add(threading.current_thread().name)
        if self.overlapped is None:
            self.overlapped = self.task.next_built.wait(10)
        return super().generate(requests)


ITEMS = [Item(str(i)) for i in range(7)]


def test_the_next_batch_is_built_while_the_engine_answers_the_current_one(tmp_path):
    task = TextTask()
    engine = WaitingEngine(task, varied=["a", "b", "c"], batch_size=3)
    records = PredictionLoop().run(task, engine, ITEMS, PredictionStore(tmp_path / "p.jsonl"))
    assert engine.overlapped is True
    assert engine.threads == {threading.current_thread().name}  # the model runs in the loop's thread
    assert task.threads.isdisjoint(engine.threads)
    assert [r.messages[-1].text for r in engine.calls] == [f"q-{i}" for i in range(7)]  # in order, once each
    assert task.built == [["0", "1", "2"], ["3", "4", "5"], ["6"]]
    assert task.engine_names == {"WaitingEngine"}
    plain = [{"id": s.id, "text": g.text} for s, g in
             zip(ITEMS, ScriptedEngine(varied=["a", "b", "c"]).generate(
                 [ChatRequest(chat(None, TextPart(f"q-{s.id}"))) for s in ITEMS]))]
    assert [{"id": r["id"], "text": r["text"]} for r in records] == plain


@pytest.mark.parametrize("failure", ["crash", "interrupt"])
def test_a_failing_batch_stops_the_loop_before_the_next_reaches_the_engine_and_a_rerun_resumes(tmp_path, failure):
    path = tmp_path / "p.jsonl"
    kwargs = {"fail_after": 4} if failure == "crash" else {"interrupt_after": 4}
    engine = ScriptedEngine(default="yes", batch_size=2, **kwargs)
    with pytest.raises(RuntimeError if failure == "crash" else KeyboardInterrupt):
        PredictionLoop().run(TextTask(), engine, ITEMS, PredictionStore(path))
    # batches 0-1 answered and stored; batch 2 failed; batch 3 (built ahead) never asked the engine
    assert [r.messages[-1].text for r in engine.calls] == ["q-0", "q-1", "q-2", "q-3"]
    assert sorted(PredictionStore(path).load()) == ["0", "1", "2", "3"]
    again = ScriptedEngine(default="yes", batch_size=2)
    records = PredictionLoop().run(TextTask(), again, ITEMS, PredictionStore(path))
    assert [r.messages[-1].text for r in again.calls] == ["q-4", "q-5", "q-6"]
    assert [r["id"] for r in records] == [s.id for s in ITEMS]


class ImageTask:
    """The tiny model answering the test images, one sample per request."""

    def __init__(self, reqs):
        self.reqs = reqs

    def predict(self, engine, samples):
        gens = engine.generate([self.reqs[int(s.id)] for s in samples])
        return [{"id": s.id, "text": g.text} for s, g in zip(samples, gens)]


def test_the_hf_engine_answers_the_loop_with_inputs_encoded_ahead_and_the_same_texts(lively_model, tmp_path):  # noqa: F811
    model, processor = lively_model
    reqs = requests() + requests()[::-1]
    direct = [g.text for g in HFEngine(batch_size=1, model=model, processor=processor).generate(reqs)]
    engine = HFEngine(batch_size=3, model=model, processor=processor)
    encoded_in: list[str] = []
    real_encode = engine._encode

    def encode(*args, **kwargs):
        encoded_in.append(threading.current_thread().name)
        return real_encode(*args, **kwargs)

    engine._encode = encode
    items = [Item(str(i)) for i in range(len(reqs))]
    records = PredictionLoop().run(ImageTask(reqs), engine, items, PredictionStore(tmp_path / "p.jsonl"))
    assert [r["text"] for r in records] == direct
    assert len(encoded_in) == 4  # each batch of 3 once (10 requests), never again in generate
    assert all(name.startswith("vlmexp-predict") for name in encoded_in)


def test_prepared_inputs_are_used_once_and_scoring_matches_without_them(lively_model):  # noqa: F811
    model, processor = lively_model
    candidates = ["Positive", "Negative"]
    plain = HFEngine(batch_size=4, model=model, processor=processor).score(requests(), candidates)
    engine = HFEngine(batch_size=4, model=model, processor=processor)
    engine.prepare(requests())  # other request objects: not used, encoded again
    reqs = requests()
    engine.prepare(reqs)
    calls = []
    real_encode = engine._encode
    engine._encode = lambda *a, **k: calls.append(1) or real_encode(*a, **k)
    assert engine.score(reqs, candidates) == plain
    assert calls == []
    assert engine.score(reqs, candidates) == plain  # the prepared inputs were taken: encoded now
    assert len(calls) == 2
