"""Serves a trained classifier (backbone plus head) through the engine protocol.

``score(requests, class_names)`` gives each class's log-probability from the head, so a task that
scores its class names runs unchanged on a classifier and, zero-shot, on a generative engine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from vlmexp.engines.base import Engine
from vlmexp.errors import EngineError
from vlmexp.messages import ChatRequest, Generation


class ClassifierEngine(Engine):
    supports_scoring = True
    trains_in_process = True

    def __init__(self, classifier, batch_size: int = 16):
        self.classifier = classifier  # vlmexp.models.classifier.Classifier
        self.batch_size = max(1, batch_size)
        self._seconds = 0.0
        self._requests = 0

    def preferred_batch_size(self) -> int:
        return self.batch_size

    def _log_probs(self, requests: Sequence[ChatRequest]) -> tuple[list[list[float]], float]:
        """Log-probabilities of every class per request, and the seconds the model took."""
        rows: list[list[float]] = []
        began = time.perf_counter()
        for start in range(0, len(requests), self.batch_size):
            rows += self.classifier.log_probs(list(requests[start:start + self.batch_size])).tolist()
        elapsed = time.perf_counter() - began
        self._seconds += elapsed
        self._requests += len(requests)
        return rows, elapsed

    def score(self, requests: Sequence[ChatRequest], candidates: Sequence[str]) -> list[list[float]]:
        names = self.classifier.class_names
        unknown = [c for c in candidates if c not in names]
        if unknown:
            raise EngineError(f"the classifier's classes are {names}; cannot score {unknown}")
        columns = [names.index(c) for c in candidates]
        return [[row[i] for i in columns] for row in self._log_probs(requests)[0]]

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        """The most probable class name for each request."""
        names = self.classifier.class_names
        rows, elapsed = self._log_probs(requests)
        return [Generation(text=names[row.index(max(row))], latency_s=elapsed / len(rows)) for row in rows]

    def run_metrics(self) -> dict[str, float]:
        if not self._seconds:
            return {}
        return {"throughput_samples_per_s": self._requests / self._seconds}

    def close(self) -> None:
        self.classifier = None
