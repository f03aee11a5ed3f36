"""Sentiment metrics (scikit-learn) and the run's files: results.csv, metrics_summary.csv and the
classification report, with the columns seed 000 writes."""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

RESULTS_COLUMNS = ["video_name", "true_label", "predicted_label", "confidence", "caption", "correct_prediction"]
SUMMARY_COLUMNS = ["metric", "value", "percentage", "description"]

# Metrics that are fractions (shown as a percentage too), in the order the summary lists them.
RATE_METRICS = {
    "accuracy": "fraction of videos whose predicted label is the true label",
    "balanced_accuracy": "mean of the per-class recalls (each class counts equally)",
    "weighted_accuracy": "class-balanced accuracy: sum_i w_i*[pred_i == true_i] / sum_i w_i with "
                         "w_i = N / (K * n_class(i)); two classes: (TP*Neg/Pos + TN) / (2*Neg) = balanced_accuracy",
    "f1_macro": "unweighted mean of the per-class F1 scores",
    "f1_weighted": "per-class F1 scores averaged with weights = class support",
    "precision_macro": "unweighted mean of the per-class precisions",
    "precision_weighted": "per-class precisions averaged with weights = class support",
    "recall_macro": "unweighted mean of the per-class recalls",
    "recall_weighted": "per-class recalls averaged with weights = class support",
    "parse_success_rate": "fraction of evaluated videos whose answer gave a label (score decision: always 1)",
}
OTHER_METRICS = {
    "num_samples": "videos evaluated (rows of results.csv)",
    "skipped_unreadable_videos": "listed videos that were missing or could not be decoded (skipped_videos.csv)",
    "unparsed_answers": "answers that named no label; predicted as task.fallback_label",
    "engine_errors": "requests the engine gave up on (counted as unparsed)",
    "latency_mean_s": "mean model time per video, seconds",
    "latency_p50_s": "median model time per video, seconds",
    "latency_p95_s": "95th percentile of model time per video, seconds",
    "throughput_samples_per_s": "videos per second of wall time",
    "eval_wall_s": "wall-clock seconds of the whole evaluation, video decoding included",
    "prompt_tokens_total": "prompt tokens over every evaluated video, resumed or reused ones included (engine)",
    "completion_tokens_total": "generated tokens over every evaluated video (engine)",
    "truncated_answers": "answers cut off at task.max_new_tokens (engine)",
    "tokens_per_s": "generated tokens per second of model time (engine)",
    "oom_retries": "CUDA out-of-memory errors recovered by halving the batch or switching model (engine)",
}


def label_metrics(truth: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """accuracy, balanced/weighted accuracy and macro/weighted precision, recall and F1.

    ``weighted_accuracy`` weighs every video by the inverse frequency of its true class
    (scikit-learn's ``compute_sample_weight("balanced")``), the "weighted accuracy" of the
    multimodal-sentiment literature; with two classes it equals balanced accuracy.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support
    from sklearn.utils.class_weight import compute_sample_weight

    if not truth:
        return {}
    truth, pred = list(truth), list(pred)
    with warnings.catch_warnings():  # a class absent from truth or predictions is not an error here
        warnings.simplefilter("ignore")
        metrics = {
            "accuracy": accuracy_score(truth, pred),
            "balanced_accuracy": balanced_accuracy_score(truth, pred),
            "weighted_accuracy": accuracy_score(truth, pred, sample_weight=compute_sample_weight("balanced", truth)),
        }
        for average in ("macro", "weighted"):
            precision, recall, f1, _ = precision_recall_fscore_support(truth, pred, average=average, zero_division=0)
            metrics.update({f"f1_{average}": f1, f"precision_{average}": precision, f"recall_{average}": recall})
    return {key: float(value) for key, value in metrics.items()}


def classification_report_text(truth: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> str:
    from sklearn.metrics import classification_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return classification_report(list(truth), list(pred), labels=list(labels), digits=4, zero_division=0)


def _number(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(round(value, 6))


def write_results_csv(records: Sequence[dict], path: Path) -> Path:
    """One row per evaluated video; ``confidence`` is blank where the decision gives none (generate)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(RESULTS_COLUMNS)
        for r in records:
            confidence = "" if r.get("confidence") is None else _number(r["confidence"])
            writer.writerow([r["video_name"], r["true_label"], r["predicted_label"], confidence, r.get("caption", ""),
                             r["predicted_label"] == r["true_label"]])
    return path


def write_metrics_summary(metrics: dict[str, float], path: Path) -> Path:
    """Rates first (value in 0..1 and as a percentage), then counts, latencies and engine totals."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_COLUMNS)
        for name, description in RATE_METRICS.items():
            if name in metrics:
                writer.writerow([name, _number(metrics[name]), f"{metrics[name] * 100:.2f}", description])
        for name, description in OTHER_METRICS.items():
            if name in metrics:
                writer.writerow([name, _number(metrics[name]), "", description])
        for name in sorted(set(metrics) - set(RATE_METRICS) - set(OTHER_METRICS)):
            writer.writerow([name, _number(metrics[name]), "", ""])
    return path


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
