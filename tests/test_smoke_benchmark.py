"""The smoke benchmark's measures beyond sai-benchmark: alarm persistence (k of n frames)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config
from vlmexp.errors import ConfigError
from vlmexp.evaluation.bootstrap import point_values
from vlmexp.evaluation.sequences import alarms

PREDS = [False, True, False, False, True, False, True, True]  # smoke from frame 3 on


def task_of(*overrides):
    return instantiate(compose_config(["task=smoke", "task.localisation=false", *overrides]).task,
                       _recursive_=False)


def scripted_sequence():
    return [{"id": f"s/{i}", "sequence": "s", "frame": i, "time_s": 60.0 * i, "truth": i >= 3, "pred": p,
             "parse_ok": True, "width": 160, "height": 120, "latency_s": 0.1, "wall_s": 0.1}
            for i, p in enumerate(PREDS)]


def test_alarm_windows():
    # smoke predictions in the last n frames:  k=2 of n=3 first holds at frame 6 ([T, F, T])
    assert alarms(PREDS, 1, 1) == PREDS
    assert alarms(PREDS, 2, 3) == [False] * 6 + [True, True]
    assert alarms(PREDS, 2, 2) == [False] * 7 + [True]


@pytest.mark.parametrize(("k", "n", "ttd", "false_alarms", "ttd_score"), [
    (1, 1, 1, 1, 0.0),    # frame 1 alarms before the smoke (false alarm); frame 4 detects: 1 frame late
    (2, 3, 3, 0, 0.25),   # no alarm before frame 6: 3 frames late, no false alarm: 1 / (1 + 3)
    (2, 2, 4, 0, 0.2),    # two in a row first at frame 7
])
def test_persistence_sets_time_to_detect_and_false_alarms(k, n, ttd, false_alarms, ttd_score):
    task = task_of(f"task.alarm.k={k}", f"task.alarm.n={n}")
    metrics = task.compute_metrics(scripted_sequence())
    assert metrics["ttd_frames_mean"] == ttd and metrics["ttd_seconds_mean"] == 60.0 * ttd
    assert metrics["false_alarm_sequences"] == false_alarms and metrics["sequences_detected"] == 1
    assert metrics["ttd_score"] == pytest.approx(ttd_score)
    assert metrics["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # image level: unchanged by persistence
    [resampling] = task.resamplings(scripted_sequence())
    assert point_values(resampling)["early_fire_score"] == pytest.approx(metrics["early_fire_score"])


@pytest.mark.parametrize(("override", "message"), [
    (["task.alarm.k=3", "task.alarm.n=2"], "task.alarm: k=3 of n=2 frames: expected whole numbers 1 <= k <= n"),
    (["task.alarm.k=0"], "task.alarm: k=0 of n=1 frames: expected whole numbers 1 <= k <= n"),
    (["+task.alarm.m=2"], "task.alarm.m: unknown key (known: k, n)"),
])
def test_bad_persistence_is_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        task_of(*override).check_settings()
    assert str(err.value) == message


def test_metrics_per_source(cache_dir, tmp_path):
    """Two cameras in D-Fire layout; "smoke" answered everywhere. campA: 3 smoke frames of 4, campB: 1 of 4."""
    from tests.smoke_fixtures import write_yolo_set
    from vlmexp.runner import run

    box = [0.5, 0.5, 0.4, 0.4]
    write_yolo_set(tmp_path / "data" / "campA", [("a1", box), ("a2", box), ("a3", box), ("a4", None)])
    write_yolo_set(tmp_path / "data" / "campB", [("b1", box), ("b2", None), ("b3", None), ("b4", None)])
    cfg = compose_config(["task=smoke", "mode=eval", f"paths.cache_dir={cache_dir}", f"data.root={tmp_path / 'data'}",
                          "data.format=yolo", "data.by_source=true", "logger=none",
                          "engine._target_=tests.helpers.ScriptedEngine",
                          "+engine.default='{\"has_smoke\": true, \"bbox\": [0.5, 0.5, 0.4, 0.4]}'"])
    metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["f1"] == pytest.approx(8 / 12) and metrics["num_samples"] == 8
    # precision = smoke share, recall 1: f1 = 2p / (p + 1)
    assert metrics["by_source/campA/f1"] == pytest.approx(6 / 7) and metrics["by_source/campA/precision"] == 0.75
    assert metrics["by_source/campB/f1"] == pytest.approx(0.4) and metrics["by_source/campB/precision"] == 0.25
    assert metrics["by_source/campA/num_samples"] == metrics["by_source/campB/num_samples"] == 4
    assert metrics["by_source/campB/false_positive_rate"] == 1.0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| campA | 0.7500 | 0.7500 | 1.0000 | 0.8571 | 1.0000 | 4.0000 |" in summary


def test_cost_per_1k_frames_from_the_token_counts_and_images(cache_dir, tmp_path):
    import json

    from tests.fake_servers import FakeServer
    from vlmexp.runner import run

    with FakeServer(models=["qwen2.5vl:7b"]) as server:
        cfg = compose_config(["task=smoke", "model=qwen7b", "mode=eval", f"paths.cache_dir={cache_dir}",
                              "data.limit=5", "logger=none", "engine=ollama", f"engine.host={server.ollama_host}",
                              "+engine.cost_per_1k_input_tokens=0.5", "+engine.cost_per_1k_output_tokens=2",
                              "+engine.cost_per_image=0.001"])
        metrics = run(cfg, output_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    prompt, completion = sum(r["prompt_tokens"] for r in records), sum(r["completion_tokens"] for r in records)
    assert [r["images"] for r in records] == [1] * 5 and prompt > 0 and completion > 0
    total = prompt * 0.5 / 1000 + completion * 2 / 1000 + 5 * 0.001
    assert metrics["cost_total"] == pytest.approx(total)
    assert metrics["cost_per_1k_frames"] == pytest.approx(total / 5 * 1000)
    assert "- prices: cost_per_1k_input_tokens=0.5" in (tmp_path / "summary.md").read_text()


def test_a_bad_price_is_one_line():
    from vlmexp.config.validate import validate

    with pytest.raises(ConfigError) as err:
        validate(compose_config(["task=smoke", "mode=eval", "+engine.cost_per_image=-1"]))
    assert str(err.value) == "engine.cost_per_image=-1: must be a price >= 0 (per 1000 tokens, or per image)"
