"""The smoke task end to end on a written sequences set, with scripted answers and hand-computed metrics.

The set (tests/smoke_fixtures.py), after ordering by time offset or natural name, per frame:
truth (S smoke / c clear), answer, parse ok, scored prediction, outcome.

  fireA  -120 c  bare "no"                      ok   no   TN
         -060 c  fenced "no"                    ok   no   TN
         +000 S  bare "no"                      ok   no   FN
         +060 S  embedded, box IoU 0.6, conf .9 ok   yes  TP
         +120 S  bbox_2d, IoU 1.0               ok   yes  TP
  fireB  -060 c  "yes", conf .8                 ok   yes  FP   (false alarm)
         +000 S  list of two bbox_2d, IoU 1.0   ok   yes  TP
         +060 S  BAD_JSON                       bad  no   FN
         +120 S  has_smoke "yes" (wrong type)   bad  no   FN
  fireC  frame1  c  {"has_smoke": false} (missing bbox)  bad no TN
         frame2  S  corrupt file: skipped
         frame10 S  box IoU 225/575 = 9/23      ok   yes  TP
  clear  a c (720p) "no" / b c (720p) bbox_2d has_smoke false ok no / c c (1080p, fire box only) 3-number bbox bad no
  missed +000 S  prose, no JSON                 bad  no   FN
         +060 S  "no"                           ok   no   FN
  alarm  f1 c (480p) "yes", conf .3             ok   yes  FP   (false alarm) / f2 c (480p) "no" ok no TN

18 images evaluated, 1 skipped; 13 parse ok. TP 4 (A+060, A+120, B+000, C10), FP 2, FN 5, TN 7.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import compose_config, run_cli
from tests.smoke_fixtures import write_answers, write_early_fire_set
from vlmexp.runner import run

SCRIPTED = ["engine._target_=tests.helpers.ScriptedEngine", "~engine.max_new_tokens", "~engine.do_sample",
            "~engine.temperature"]

# mAP at IoU 0.4 (COCO, 101 recall points). Detections by score (ties keep image order):
#   A+120 1.0 TP | B+000 box1 1.0 TP | B+000 box2 1.0 FP | C10 1.0 FP (IoU 0.39) | A+060 .9 TP | B-060 .8 FP | f1 .3 FP
#   precision 1, 1, 2/3, 1/2, 3/5, 1/2, 3/7 -> right envelope 1, 1, 2/3, 3/5, 3/5, 1/2, 3/7
#   recall (9 true boxes) 1/9, 2/9, 2/9, 2/9, 3/9, 3/9, 3/9
#   recall points 0.00-0.11 (12) -> 1; 0.12-0.22 (11) -> 1; 0.23-0.33 (11) -> 3/5; 0.34-1.00 (67) -> 0
MAP_NEGATIVE = (12 + 11 + 11 * 3 / 5) / 101

EXPECTED = {
    "num_samples": 18, "skipped_corrupt_images": 1, "engine_errors": 0,
    "parse_success_rate": 13 / 18,
    "accuracy": 11 / 18,  # (TP 4 + TN 7) / 18
    "precision": 4 / 6,  # TP 4 / (TP 4 + FP 2)
    "recall": 4 / 9,  # TP 4 / (TP 4 + FN 5)
    "f1": 8 / 15,  # 2 TP / (2 TP + FP + FN) = 8 / 15
    "false_positive_rate": 2 / 9,  # FP 2 / (FP 2 + TN 7)
    # smoke and predicted smoke: A+060 0.6, A+120 1, B+000 1, C10 9/23
    "mean_iou": (0.6 + 1 + 1 + 9 / 23) / 4,
    "iou40_hit_rate": 3 / 9,  # 3 of the 9 smoke images reach IoU 0.4
    "map_iou40": MAP_NEGATIVE,
    # fireA: first smoke at position 2, found at 3 -> 1 frame, +60 s - 0 s = 60 s
    # fireB: found at once -> 0 frames, 0 s; false alarm at -060
    # fireC: frame2 is dropped, so the first smoke frame is frame10, found at once -> 0 frames, no times
    # missed: missed; alarm: false alarm in a clear sequence
    "sequences_detected": 3, "sequences_missed": 1, "false_alarm_sequences": 2,
    "ttd_frames_mean": (1 + 0 + 0) / 3, "ttd_seconds_mean": (60 + 0) / 2,
    # clear images per bucket: 240p (100x100) A-120 A-060 B-060(FP) C1 -> 1/4; 480p f1(FP) f2 -> 1/2;
    # 720p a b -> 0; 1080p c -> 0
    "fpr_240p": 1 / 4, "fpr_480p": 1 / 2, "fpr_720p": 0.0, "fpr_1080p": 0.0,
    "latency_p50_s": 0.01, "latency_p95_s": 0.01, "truncated_answers": 0.0,
    # ttd term: mean(1/(1+1), 1/(1+0), 1/(1+0), 0 for missed) = 0.625, times (1 - 2 false alarms / 6 sequences)
    "ttd_score": 0.625 * (1 - 2 / 6),
    "latency_score": 1.0 / (1.0 + 0.01),  # budget 1 s / (budget + p50)
    "early_fire_score": 0.5 * 8 / 15 + 0.3 * 0.625 * (2 / 3) + 0.2 / 1.01,  # weights sum to 1
}


@pytest.fixture(scope="module")
def early_fire(tmp_path_factory):
    root = tmp_path_factory.mktemp("early_fire")
    answers = write_early_fire_set(root / "data")
    return root, write_answers(root / "answers.json", answers)


def _run(early_fire, tmp_path, *extra):
    root, answers = early_fire
    cfg = compose_config(["mode=eval", f"data.root={root / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}",
                          "logger=none", *SCRIPTED, f"+engine.answers={answers}", *extra])
    return run(cfg, output_dir=tmp_path / "out")


def test_every_metric_matches_the_hand_computed_value(early_fire, tmp_path):
    metrics = _run(early_fire, tmp_path)
    intervals = {f"{k}_ci_{end}" for k in ("f1", "recall", "false_positive_rate", "early_fire_score")
                 for end in ("low", "high")}
    assert set(metrics) == set(EXPECTED) | {"eval_wall_s", "throughput_samples_per_s"} | intervals
    for key, value in EXPECTED.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    # throughput: frames per second of the wall time their batches took (each record holds its share)
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    answered = [r for r in records if not r.get("skipped")]
    assert metrics["throughput_samples_per_s"] == pytest.approx(18 / sum(r["wall_s"] for r in answered))


def test_bad_json_discard_drops_unparsed_answers(early_fire, tmp_path):
    metrics = _run(early_fire, tmp_path, "task.bad_json=discard")
    # dropped: B+060, B+120, C frame1, clear c, missed +000 -> 13 scored: TP 4, FP 2, FN 2, TN 5
    assert metrics["accuracy"] == pytest.approx(9 / 13)
    assert metrics["precision"] == pytest.approx(4 / 6)
    assert metrics["recall"] == pytest.approx(4 / 6)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["false_positive_rate"] == pytest.approx(2 / 7)
    assert metrics["parse_success_rate"] == pytest.approx(13 / 18)  # still over every evaluated image
    assert metrics["num_samples"] == 18
    # 6 true boxes: recall points 0-0.16 (17) -> 1, 0.17-0.33 (17) -> 1, 0.34-0.50 (17) -> 3/5
    assert metrics["map_iou40"] == pytest.approx((17 + 17 + 17 * 3 / 5) / 101, abs=1e-6)
    assert metrics["sequences_detected"] == 3 and metrics["sequences_missed"] == 1


def test_switches_off_leave_their_metrics_out(early_fire, tmp_path):
    metrics = _run(early_fire, tmp_path, "task.calibration=false", "task.localisation=false")
    assert not [k for k in metrics if k.startswith("fpr_") or k in ("mean_iou", "iou40_hit_rate", "map_iou40")]
    assert metrics["f1"] == pytest.approx(8 / 15)


def test_cli_run_logs_metrics_and_artifacts_to_mlflow(early_fire, tmp_path):
    import mlflow

    root, answers = early_fire
    result = run_cli(["mode=eval", f"data.root={root / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}",
                      "logger=mlflow", *SCRIPTED, f"+engine.answers={answers}", f"hydra.run.dir={tmp_path / 'out'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the corrupt frame is named once in the log, and the run goes on
    log = result.stdout + result.stderr
    assert len([line for line in log.splitlines() if "frame2.png" in line]) == 1 and "Traceback" not in log, log

    [found] = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    from vlmexp.tracking.names import logged

    held = found.data.metrics
    assert set(logged(EXPECTED)) <= set(held) and "data/num_samples" in held and "perf/engine_errors" in held
    assert held["test/f1"] == pytest.approx(8 / 15) and held["test/ttd_seconds_mean"] == pytest.approx(30.0)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(found.info.run_id)}
    assert {"predictions.csv", "predictions.jsonl", "confusion_matrix.png", "gallery.png"} <= artifacts

    with (tmp_path / "out" / "predictions.csv").open() as fh:
        rows = {row["id"]: row for row in csv.DictReader(fh)}
    assert len(rows) == 19  # 18 evaluated + 1 skipped
    found_a = rows["fireA/1000_+00060.png"]
    assert [found_a[k] for k in ("sequence", "frame", "truth", "pred")] == ["fireA", "3", "True", "True"]
    assert json.loads(found_a["pred_boxes"]) == [[0.6, 0.5, 0.4, 0.4]]
    assert json.loads(found_a["true_boxes"]) == [[0.5, 0.5, 0.4, 0.4]]
    assert (found_a["confidence"], found_a["parse_ok"], found_a["latency_s"]) == ("0.9", "True", "0.01")
    assert found_a["raw"].startswith("I see smoke:")
    assert rows["fireB/2000_+00060.png"]["parse_ok"] == "False"
    skipped = rows["fireC/frame2.png"]
    assert "frame2.png" in skipped["skipped"] and skipped["pred"] == "" and skipped["sequence"] == "fireC"
