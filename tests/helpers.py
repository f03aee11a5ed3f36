"""Test doubles that are real plugins: a scripted engine the runner can instantiate by _target_."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from vlmexp.engines.base import Engine
from vlmexp.messages import ChatRequest, Generation


class ScriptedEngine(Engine):
    """Answers from a script instead of a model.

    ``answers`` maps a key to the text to answer; the key of a request is the size-and-pixel
    fingerprint of its first image (see :func:`image_key`) or, without images, its last text.
    ``scores`` maps a key to the log-probabilities :meth:`score` returns; ``answers`` and ``scores``
    may also name a JSON file holding that mapping.
    ``default`` answers anything unscripted; ``varied``, a list of answers, answers it instead with the
    one a hash of the request's key picks (the same in every process). ``sleep_s`` is spent on each
    request, as a model would (the fault-injection tests kill the process mid-run).
    ``interrupt_after`` raises KeyboardInterrupt once that many requests have been answered (a user
    pressing Ctrl-C mid-run) — with a ``call_log``, once only, counting what earlier runs answered, so
    a rerun of the same config goes through; ``fail_after`` raises RuntimeError instead (a crash).
    ``call_log`` appends the key of every answered request to a file,
    so a test can see what a run sent. Other keyword arguments (the ``engine=hf`` keys left in the
    composed config when only ``engine._target_`` is overridden) are ignored.
    """

    supports_scoring = True

    def __init__(self, answers: dict | str | None = None, default: str = "", latency_s: float = 0.01,
                 batch_size: int = 4, interrupt_after: int | None = None, fail_after: int | None = None,
                 scores: dict | str | None = None, call_log: str | None = None,
                 varied: Sequence[str] | None = None, sleep_s: float = 0.0, *, run=None, model=None,
                 processor=None, **_engine_keys):
        if isinstance(answers, str):  # a JSON file written by the test
            answers = json.loads(Path(answers).read_text())
        if isinstance(scores, str):
            scores = json.loads(Path(scores).read_text())
        self.answers = dict(answers or {})
        self.scores = dict(scores or {})
        self.default = default
        self.latency_s = latency_s
        self.batch_size = batch_size
        self.interrupt_after = interrupt_after
        self.fail_after = fail_after
        self.call_log = Path(call_log) if call_log else None
        self.varied = list(varied or [])
        self.sleep_s = sleep_s
        self.calls: list[ChatRequest] = []

    def preferred_batch_size(self) -> int:
        return self.batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        out = []
        for request in requests:
            if self.interrupt_after is not None and self._answered() >= self.interrupt_after:
                if self.call_log is None:
                    raise KeyboardInterrupt
                fired = self.call_log.with_suffix(".interrupted")
                if not fired.exists():
                    fired.touch()
                    raise KeyboardInterrupt
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("scripted engine crash")
            self.calls.append(request)
            if self.call_log:
                with self.call_log.open("a") as fh:
                    fh.write(request_key(request) + "\n")
            text = self.answers.get(request_key(request), self._unscripted(request))
            if self.sleep_s:
                time.sleep(self.sleep_s)
            sizes = [tuple(img.size) for img in request.images]
            out.append(Generation(text=text, latency_s=self.latency_s, image_sizes=sizes))
        return out

    def _unscripted(self, request: ChatRequest) -> str:
        if not self.varied:
            return self.default
        digest = hashlib.sha256(request_key(request).encode()).digest()
        return self.varied[digest[0] % len(self.varied)]

    def _answered(self) -> int:
        if self.call_log is not None and self.call_log.is_file():
            return len(self.call_log.read_text().splitlines())
        return len(self.calls)

    def score(self, requests: Sequence[ChatRequest], candidates: Sequence[str]) -> list[list[float]]:
        self.calls.extend(requests)
        return [list(self.scores.get(request_key(r), [0.0] * len(candidates))) for r in requests]


class GenerateOnlyScriptedEngine(ScriptedEngine):
    """A scripted engine that, like a chat server, cannot score candidate answers."""

    supports_scoring = False

    def score(self, requests, candidates):
        return Engine.score(self, requests, candidates)


def image_key(image) -> str:
    """A stable key for an image's content: size plus the colour of a few pixels."""
    w, h = image.size
    probes = [image.getpixel((x * (w - 1) // 4, y * (h - 1) // 4)) for x in range(5) for y in range(5)]
    return f"{w}x{h}:" + ",".join("".join(f"{c:02x}" for c in p) for p in probes)


def request_key(request: ChatRequest) -> str:
    if request.images:
        return image_key(request.images[0])
    return request.messages[-1].text


def assert_learned(metrics: dict, thresholds: dict[str, float], seed: int = 42) -> None:
    """Assert that a training outcome reached each threshold; the failure message carries what is
    needed to reproduce and compare it: every metric, the seed and the package versions."""
    import os

    import torch

    from vlmexp.provenance import package_versions

    missed = {key: metrics.get(key) for key, floor in thresholds.items()
              if not metrics.get(key, float("-inf")) >= floor}
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in sorted(metrics.items())}
    assert not missed, (
        f"training outcome below its floor {thresholds}: {missed}; seed {seed}, torch threads "
        f"{torch.get_num_threads()} of {os.cpu_count()} CPUs, versions {package_versions()}; metrics {shown}")
