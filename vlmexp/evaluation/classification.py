"""Shared metric helpers (scikit-learn underneath) and latency statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def binary_metrics(truth: Sequence[bool], pred: Sequence[bool]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and false-positive rate with positive class = True."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    if not truth:
        return {}
    y, p = np.asarray(truth, bool), np.asarray(pred, bool)
    precision, recall, f1, _ = precision_recall_fscore_support(y, p, average="binary", pos_label=True,
                                                               zero_division=0)
    tn, fp, _, _ = confusion_matrix(y, p, labels=[False, True]).ravel()
    return {"accuracy": float(accuracy_score(y, p)), "precision": float(precision), "recall": float(recall),
            "f1": float(f1), "false_positive_rate": float(fp / (fp + tn)) if (fp + tn) else 0.0}


def latency_metrics(latencies: Sequence[float], wall_s: float | None = None) -> dict[str, float]:
    """p50/p95 of per-sample latency, and throughput: samples per second of ``wall_s`` (the wall time
    they took), else of their summed latencies (which overcounts requests that were in flight together)."""
    if not latencies:
        return {}
    arr = np.asarray(latencies, float)
    total = wall_s if wall_s else float(arr.sum())
    return {"latency_p50_s": float(np.percentile(arr, 50)), "latency_p95_s": float(np.percentile(arr, 95)),
            "throughput_samples_per_s": float(len(arr) / total) if total > 0 else 0.0}
