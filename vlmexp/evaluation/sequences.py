"""Time-to-detect over frame sequences (the Early-Fire benchmark's "early" part).

Records carry ``sequence`` (None for single images), ``frame`` (position in the sequence),
``time_s`` (seconds from the FIgLib offset, or None), ``truth`` and ``pred`` (the scored decision).
Frames missing from the records (skipped or discarded) are simply absent: delays count the frames
that were evaluated.

Alarm persistence (sai-benchmark's ``persistence_frames``): the alarm is raised at a frame when at
least ``k`` of the last ``n`` evaluated frames (that one included) were predicted smoke; time-to-detect
runs to the first alarm at or after the first smoke frame, and a false alarm is one raised before it.
``k = n = 1`` is a single smoke prediction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class SequenceOutcome:
    sequence: str
    has_smoke: bool
    false_alarm: bool  # a smoke prediction before the first smoke frame (or anywhere, without smoke)
    ttd_frames: int | None = None  # None: missed (or no smoke)
    ttd_seconds: float | None = None  # None: missed, or the frames have no times

    @property
    def detected(self) -> bool:
        return self.ttd_frames is not None


def alarms(preds: Sequence[bool], k: int = 1, n: int = 1) -> list[bool]:
    """Per frame: were at least ``k`` of the last ``n`` predictions (this one included) smoke?"""
    return [sum(bool(p) for p in preds[max(0, i - n + 1):i + 1]) >= k for i in range(len(preds))]


def sequence_outcomes(records: Sequence[dict], k: int = 1, n: int = 1) -> list[SequenceOutcome]:
    by_sequence: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("sequence") is not None:
            by_sequence[r["sequence"]].append(r)
    outcomes = []
    for name, frames in by_sequence.items():
        frames = sorted(frames, key=lambda r: r["frame"])
        raised = alarms([r["pred"] for r in frames], k, n)
        first = next((i for i, r in enumerate(frames) if r["truth"]), None)
        before = raised if first is None else raised[:first]
        outcome = SequenceOutcome(name, first is not None, any(before))
        if first is not None:
            hit = next((i for i in range(first, len(frames)) if raised[i]), None)
            if hit is not None:
                outcome.ttd_frames = hit - first
                t0, t1 = frames[first].get("time_s"), frames[hit].get("time_s")
                if t0 is not None and t1 is not None:
                    outcome.ttd_seconds = t1 - t0
        outcomes.append(outcome)
    return outcomes


def sequence_metrics(records: Sequence[dict], k: int = 1, n: int = 1) -> dict[str, float]:
    """``ttd_frames_mean``/``ttd_seconds_mean`` over detected sequences (left out when there are none),
    ``sequences_detected``, ``sequences_missed``, ``false_alarm_sequences``; empty without sequences."""
    outcomes = sequence_outcomes(records, k, n)
    if not outcomes:
        return {}
    detected = [o for o in outcomes if o.detected]
    timed = [o.ttd_seconds for o in detected if o.ttd_seconds is not None]
    metrics = {"sequences_detected": float(len(detected)),
               "sequences_missed": float(sum(o.has_smoke and not o.detected for o in outcomes)),
               "false_alarm_sequences": float(sum(o.false_alarm for o in outcomes))}
    if detected:
        metrics["ttd_frames_mean"] = sum(o.ttd_frames for o in detected) / len(detected)
    if timed:
        metrics["ttd_seconds_mean"] = sum(timed) / len(timed)
    return metrics


def ttd_score(records: Sequence[dict], k: int = 1, n: int = 1) -> float | None:
    """The time-to-detect term of the early-fire score, 0..1: the mean over sequences with smoke of
    ``1 / (1 + ttd_frames)`` (a missed sequence scores 0), times the share of sequences without a false
    alarm, so that answering "smoke" everywhere does not look early. None without smoke sequences."""
    outcomes = sequence_outcomes(records, k, n)
    smoky = [o for o in outcomes if o.has_smoke]
    if not smoky:
        return None
    early = sum(1.0 / (1 + o.ttd_frames) if o.detected else 0.0 for o in smoky) / len(smoky)
    return early * (1.0 - sum(o.false_alarm for o in outcomes) / len(outcomes))
