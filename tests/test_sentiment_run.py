"""task=sentiment end to end with scripted model answers: metrics against hand-computed values, the
files seed 000 writes, MLflow artifacts, and bad input through the command line."""

from __future__ import annotations

import csv
import json
import math

import mlflow
import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config, run_cli
from tests.sentiment_set import TRUE, VIDEOS, keyed, make_golden_set
from vlmexp.runner import run
from vlmexp.tasks.sentiment_report import RESULTS_COLUMNS, SUMMARY_COLUMNS

CAPTIONS = {name: caption for name, _, _, caption in VIDEOS}
ARTIFACTS = {"results.csv", "metrics_summary.csv", "skipped_videos.csv", "unparsed_answers.csv",
             "classification_report.txt", "confusion_matrix.png", "predictions.jsonl"}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _run(tmp_path, engine: dict, *overrides: str):
    root = make_golden_set(tmp_path / "golden")
    cfg = compose_config(["task=sentiment", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}",
                          "hardware=cpu", *overrides])
    cfg.engine = OmegaConf.create(engine(root))
    out = tmp_path / "out"
    metrics = run(cfg, output_dir=out)
    return metrics, out


def _csv(path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def _mlflow_run():
    (found,) = mlflow.search_runs(experiment_names=["sentiment"], output_format="list")
    return found


# Log-probabilities (Positive, Negative) per video. Truth P P P P N N N -> prediction P P N P N P P:
# TP=3, FN=1, TN=1, FP=2 (Positive as the positive class); v5 is an exact tie -> fallback Negative.
SCORES = {"v1.mp4": [-0.1, -2.4], "v2.avi": [-0.5, -1.0], "v3.mp4": [-3.0, -0.2], "v4.avi": [-0.3, -0.9],
          "v5.mp4": [-1.0, -1.0], "v6.avi": [-0.4, -1.6], "v7.mp4": [-0.2, -1.5]}
PRED_SCORE = {"v1.mp4": ("Positive", _sigmoid(2.3)), "v2.avi": ("Positive", _sigmoid(0.5)),
              "v3.mp4": ("Negative", _sigmoid(2.8)), "v4.avi": ("Positive", _sigmoid(0.6)),
              "v5.mp4": ("Negative", 0.5), "v6.avi": ("Positive", _sigmoid(1.2)), "v7.mp4": ("Positive", _sigmoid(1.3))}


def test_score_decision_metrics_and_files(tmp_path):
    metrics, out = _run(tmp_path, lambda root: {"_target_": "tests.helpers.ScriptedEngine",
                                                "scores": keyed(root, SCORES)})
    # Positive: precision 3/5, recall 3/4, F1 2/3 (support 4); Negative: precision 1/2, recall 1/3, F1 2/5 (support 3)
    expected = {
        "accuracy": 4 / 7,
        "balanced_accuracy": (3 / 4 + 1 / 3) / 2,
        "weighted_accuracy": (3 * 3 / 4 + 1) / (2 * 3),  # (TP*Neg/Pos + TN) / (2*Neg)
        "precision_macro": (3 / 5 + 1 / 2) / 2, "precision_weighted": (4 * 3 / 5 + 3 * 1 / 2) / 7,
        "recall_macro": (3 / 4 + 1 / 3) / 2, "recall_weighted": (4 * 3 / 4 + 3 * 1 / 3) / 7,
        "f1_macro": (2 / 3 + 2 / 5) / 2, "f1_weighted": (4 * 2 / 3 + 3 * 2 / 5) / 7,
        "parse_success_rate": 1.0, "num_samples": 7.0, "skipped_unreadable_videos": 2.0, "unparsed_answers": 0.0,
        "engine_errors": 0.0,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key
    assert {"latency_mean_s", "latency_p50_s", "latency_p95_s", "throughput_samples_per_s"} <= set(metrics)

    rows = _csv(out / "results.csv")
    assert rows[0] == RESULTS_COLUMNS == ["video_name", "true_label", "predicted_label", "confidence", "caption",
                                          "correct_prediction"]
    assert [r[0] for r in rows[1:]] == ["v1.mp4", "v2.avi", "v3.mp4", "v4.avi", "v5.mp4", "v6.avi", "v7.mp4"]
    for name, true, pred, confidence, caption, correct in rows[1:]:
        assert (true, pred) == (TRUE[name], PRED_SCORE[name][0])
        assert float(confidence) == pytest.approx(PRED_SCORE[name][1], abs=1e-6)
        assert correct == str(pred == true)
        assert caption == CAPTIONS[name]
    assert CAPTIONS["v1.mp4"] == "I passed my exam" and CAPTIONS["v3.mp4"] == ""

    summary = _csv(out / "metrics_summary.csv")
    assert summary[0] == SUMMARY_COLUMNS == ["metric", "value", "percentage", "description"]
    by_name = {r[0]: r for r in summary[1:]}
    assert by_name["accuracy"][1:3] == ["0.571429", "57.14"]
    assert by_name["balanced_accuracy"][1:3] == ["0.541667", "54.17"]
    assert by_name["f1_weighted"][1:3] == ["0.552381", "55.24"]
    assert by_name["num_samples"][1:3] == ["7", ""] and by_name["skipped_unreadable_videos"][1:3] == ["2", ""]
    assert "(TP*Neg/Pos + TN) / (2*Neg)" in by_name["weighted_accuracy"][3]
    assert [r[0] for r in summary[1:11]] == ["accuracy", "balanced_accuracy", "weighted_accuracy", "f1_macro",
                                             "f1_weighted", "precision_macro", "precision_weighted", "recall_macro",
                                             "recall_weighted", "parse_success_rate"]

    skipped = _csv(out / "skipped_videos.csv")
    assert [r[:2] for r in skipped] == [["video_name", "true_label"], ["missing.mp4", "Positive"],
                                        ["corrupt.avi", "Negative"]]
    assert "no such file" in skipped[1][2] and "corrupt.avi" in skipped[2][2]
    report = (out / "classification_report.txt").read_text()
    assert "Positive" in report and "Negative" in report and "0.6000" in report  # Positive precision 3/5

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    tie = next(r for r in records if r["id"] == "v5.mp4")
    assert tie["scores"] == {"Positive": -1.0, "Negative": -1.0} and tie["decision"] == "score"

    logged = _mlflow_run()
    assert logged.data.metrics["test/accuracy"] == pytest.approx(4 / 7)
    held = logged.data.metrics
    assert held["data/skipped_unreadable_videos"] == 2.0 and held["data/num_samples"] == 7.0
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(logged.info.run_id)}
    assert names >= ARTIFACTS


# Truth P P P P N N N -> P P N(lexicon) P N P(lexicon) N(unparsed -> fallback): TP=3, FN=1, TN=2, FP=1.
ANSWERS = {"v1.mp4": "Positive", "v2.avi": "  positive.  ", "v3.mp4": "The signer looks sad and worried.",
           "v4.avi": "I think the sentiment is Positive", "v5.mp4": "negative", "v6.avi": "The signer seems happy",
           "v7.mp4": "Positive or Negative, hard to say."}


def test_generate_decision_parses_and_marks_fallbacks(tmp_path):
    # An engine that cannot score: decision=auto becomes generate.
    metrics, out = _run(tmp_path, lambda root: {"_target_": "tests.helpers.GenerateOnlyScriptedEngine",
                                                "answers": keyed(root, ANSWERS), "latency_s": 0.25}, "logger=none")
    expected = {"accuracy": 5 / 7, "balanced_accuracy": (3 / 4 + 2 / 3) / 2, "weighted_accuracy": (3 / 4 + 2 / 3) / 2,
                "precision_macro": (3 / 4 + 2 / 3) / 2, "precision_weighted": (4 * 3 / 4 + 3 * 2 / 3) / 7,
                "recall_macro": (3 / 4 + 2 / 3) / 2, "recall_weighted": 5 / 7,
                "f1_macro": (3 / 4 + 2 / 3) / 2, "f1_weighted": (4 * 3 / 4 + 3 * 2 / 3) / 7,
                "parse_success_rate": 6 / 7, "unparsed_answers": 1.0, "num_samples": 7.0,
                "skipped_unreadable_videos": 2.0,
                "latency_mean_s": 0.25, "latency_p50_s": 0.25, "truncated_answers": 0.0}
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key

    rows = _csv(out / "results.csv")
    assert rows[0] == RESULTS_COLUMNS
    assert [(r[0], r[2], r[3]) for r in rows[1:]] == [
        ("v1.mp4", "Positive", ""), ("v2.avi", "Positive", ""), ("v3.mp4", "Negative", ""), ("v4.avi", "Positive", ""),
        ("v5.mp4", "Negative", ""), ("v6.avi", "Positive", ""), ("v7.mp4", "Negative", "")]  # no confidence
    unparsed = _csv(out / "unparsed_answers.csv")
    assert unparsed == [["video_name", "true_label", "predicted_label", "answer", "error"],
                        ["v7.mp4", "Negative", "Negative", "Positive or Negative, hard to say.", ""]]
    records = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert (records["v7.mp4"]["parse_ok"], records["v7.mp4"]["fallback"]) == (False, True)
    assert (records["v3.mp4"]["parsed_by"], records["v1.mp4"]["parsed_by"]) == ("lexicon", "label")
    assert records["v1.mp4"]["decision"] == "generate"


def test_frames_mode_sends_every_sampled_frame_and_limit_caps_rows(tmp_path):
    """frames: the first image is the first sampled frame; data.limit=4 keeps the first 4 rows
    (v1, v2, missing, v3) like seed 000's --max_videos."""
    metrics, out = _run(tmp_path, lambda root: {"_target_": "tests.helpers.ScriptedEngine",
                                                "answers": keyed(root, {"v1.mp4": "Negative", "v2.avi": "negative"},
                                                                 size=56)},
                        "task.decision=generate", "task.frame_mode=frames", "task.num_frames=3", "task.frame_size=56",
                        "data.limit=4", "logger=none")
    assert (metrics["num_samples"], metrics["skipped_unreadable_videos"]) == (3.0, 1.0)
    rows = _csv(out / "results.csv")
    assert [(r[0], r[2]) for r in rows[1:]] == [("v1.mp4", "Negative"), ("v2.avi", "Negative"),
                                                ("v3.mp4", "Negative")]
    assert metrics["parse_success_rate"] == pytest.approx(2 / 3)  # v3 unscripted: "" -> fallback
    assert metrics["accuracy"] == 0.0


@pytest.mark.parametrize(("labels", "message"), [
    ("video_name,label\nv1.mp4,Positive\nv2.avi,maybe\n",
     "golden_labels.csv:3: unknown label 'maybe' for v2.avi (expected Positive/Negative in any case, or 1/0)"),
    ("video_name,sentiment\nv1.mp4,Positive\n",
     "golden_labels.csv: missing column(s) label (found: video_name, sentiment; expected video_name,label[,caption])"),
])
def test_bad_labels_file_fails_with_one_line(tmp_path, labels, message):
    root = make_golden_set(tmp_path / "golden")
    (root / "golden_labels.csv").write_text(labels)
    result = run_cli(["task=sentiment", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"],
                     cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {root / 'golden_labels.csv'}{message[len('golden_labels.csv'):]}"]
    assert "Traceback" not in result.stdout + result.stderr


SCRIPTED = ["~engine.max_new_tokens", "~engine.do_sample", "~engine.temperature"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["task.decision=score", "engine._target_=tests.helpers.GenerateOnlyScriptedEngine", *SCRIPTED],
     "error: task.decision=score: engine GenerateOnlyScriptedEngine cannot score candidate answers; "
     "use task.decision=generate (or auto)"),
    (["task.fallback_label=Neutral"],  # raised by the task's constructor, inside Hydra's instantiate
     "error: task.fallback_label=Neutral: must be one of the labels (Positive, Negative)"),
])
def test_bad_task_settings_fail_at_start_with_one_line(tmp_path, overrides, message):
    root = make_golden_set(tmp_path / "golden")
    result = run_cli(["task=sentiment", f"data.root={root}", f"paths.cache_dir={tmp_path / 'cache'}", "logger=none",
                      *overrides], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert "Traceback" not in result.stdout + result.stderr
