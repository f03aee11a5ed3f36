"""The names metrics are logged under in MLflow: ``<namespace>/<key>``, so the UI shows one chart
section per namespace (``train``, ``val``, ``test``, ``perf``, ``data``).

Tasks, trainers and engines compute short keys (``f1``, ``train_loss``, ``latency_p50_s``); the
runner returns and prints them as they are. Only what goes to the tracker is renamed, here, by the
key: the vocabulary below sends counts of what was read to ``data/``, timings, tokens and costs to
``perf/``, training and validation keys to ``train/`` and ``val/``, and everything else to the phase
it was measured in (the final evaluation: ``test/``). The same function reads any name back: a short
key, a logged name, or a flat name of a run logged before namespaces (``f1``, ``train_loss``,
``num_images``) all give the logged name, so a reader accepts them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

NAMESPACES = ("train", "val", "test", "perf", "data")

#: First match wins; a ``train``/``val`` key loses its ``train_``/``val_`` prefix (``val_loss`` -> ``val/loss``).
VOCABULARY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data", ("num_*", "skipped_*", "*_questions", "*_images", "images", "boxes", "boxes_*", "qa_pairs",
              "qa_pairs_*")),
    ("perf", ("latency_*_s", "throughput_*", "*_wall_s", "*tokens*", "cost_*", "model_load_s", "truncated_answers",
              "oom_retries", "engine_errors")),
    ("train", ("train_*", "lr")),
    ("val", ("val_*", "best_epoch", "best_val_loss")),
)

#: Keys of earlier releases, and the key that replaced each.
RENAMED = {"num_images": "num_samples", "num_videos": "num_samples", "skipped_images": "skipped_corrupt_images",
           "skipped_videos": "skipped_unreadable_videos", "throughput_images_per_s": "throughput_samples_per_s",
           "throughput_videos_per_s": "throughput_samples_per_s"}


def logged_name(key: str, phase: str = "test") -> str:
    """The name ``key`` (measured in ``phase``: train, val or test) is logged under."""
    head = key.split("/", 1)[0]
    if head in NAMESPACES:
        return key
    if "/" in key:  # a group of the task's own (by_source/<source>/<metric>): under the phase
        return f"{phase}/{key}"
    key = RENAMED.get(key, key)
    for namespace, patterns in VOCABULARY:
        if any(fnmatchcase(key, p) for p in patterns):
            return f"{namespace}/{key.removeprefix(namespace + '_') if namespace in ('train', 'val') else key}"
    return f"{phase}/{key}"


def logged(metrics: Mapping[str, float], phase: str = "test") -> dict[str, float]:
    """``metrics`` under their logged names; applied to a run's metrics read back from MLflow, it also
    renames those of a run logged before namespaces."""
    return {logged_name(k, phase): v for k, v in metrics.items()}


def find(keys: Iterable[str], name: str) -> str | None:
    """The key of ``keys`` that ``name`` means: itself, or the one logged under the same name
    (``test/f1`` finds ``f1`` and ``f1`` finds ``test/f1``)."""
    keys = list(keys)
    if name in keys:
        return name
    wanted = logged_name(name)
    return next((k for k in keys if logged_name(k) == wanted), None)
