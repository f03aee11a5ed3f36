"""Engine figures over the whole evaluation, against a fake Ollama server on 127.0.0.1: throughput
from wall time with requests in flight, token totals from the stored records (a rerun that reuses
them reports the whole set), answers cut off at the token cap counted and named in one line."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import compose_config
from tests.fake_servers import FakeServer, Reply, echo
from vlmexp.runner import run

QWEN_TAG = "qwen2.5vl:7b"


def ollama_eval(cache_dir, server, *extra):
    return compose_config(["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}",
                           "data.limit=8", "logger=none", "engine=ollama", f"engine.host={server.ollama_host}",
                           *extra])


def records(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]


def test_throughput_counts_requests_in_flight_once(cache_dir, tmp_path):
    # a long delay next to the client's own work (resizing, storing), so a loaded machine still shows it
    with FakeServer(models=[QWEN_TAG], delay_s=1.0) as server:
        metrics = run(ollama_eval(cache_dir, server, "engine.concurrency=4"), output_dir=tmp_path / "out")
    answered = records(tmp_path / "out")
    latency_based = 8 / sum(r["latency_s"] for r in answered)  # what a sum of latencies would say
    assert metrics["throughput_samples_per_s"] == pytest.approx(8 / sum(r["wall_s"] for r in answered))
    assert metrics["throughput_samples_per_s"] > 2.0 * latency_based  # 4 in flight: nearly 4 times
    assert sum(r["wall_s"] for r in answered) == pytest.approx(metrics["eval_wall_s"], rel=0.3)


def test_a_rerun_that_reuses_every_answer_reports_the_whole_sets_tokens(cache_dir, tmp_path):
    with FakeServer(models=[QWEN_TAG]) as server:
        first = run(ollama_eval(cache_dir, server, "data.limit=6"), output_dir=tmp_path / "a")
        again = run(ollama_eval(cache_dir, server, "data.limit=6"), output_dir=tmp_path / "b")
        asked = len([c for c in server.chats if c["outcome"] == "answered"])
    assert asked == 6  # the rerun asked nothing
    stored = records(tmp_path / "a")
    assert first["prompt_tokens_total"] == again["prompt_tokens_total"] == sum(r["prompt_tokens"] for r in stored)
    assert first["completion_tokens_total"] == again["completion_tokens_total"] > 0


def cut_every_other(request) -> Reply:
    reply = echo(request)
    cut = int(request.images[0].getpixel((0, 0))[0]) % 2 == 0 if request.images else False
    return Reply(reply.text[:20] if cut else reply.text, reply.prompt_tokens, 6 if cut else reply.completion_tokens,
                 truncated=cut)


def test_answers_cut_off_at_the_token_cap_are_counted_and_named(cache_dir, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with FakeServer(cut_every_other, models=[QWEN_TAG]) as server:
        metrics = run(ollama_eval(cache_dir, server, "task.max_new_tokens=6"), output_dir=tmp_path / "out")
    cut = [r for r in records(tmp_path / "out") if r["truncated"]]
    assert 0 < len(cut) < 8 and metrics["truncated_answers"] == len(cut)
    assert all(not r["parse_ok"] for r in cut)  # what parse_success_rate alone would have shown
    [line] = [m for m in caplog.messages if "cut off" in m]
    assert line == (f"{len(cut)} of 8 answers were cut off at task.max_new_tokens=6: raise it (parse failures "
                    "may be cut-off answers)")
