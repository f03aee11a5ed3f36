"""What answering cost, from the stored records, so a resumed or reused evaluation reports the
whole set and not only the part this process answered: token totals, answers cut off at the token
cap, and throughput from wall time (each record holds its share of its batch's wall time, which
counts concurrent requests once, unlike a sum of per-request latencies)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def usage_fields(generation) -> dict:
    """The fields a task's record keeps of an engine's answer."""
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "truncated": generation.truncated}


def wall_seconds(records: Sequence[dict]) -> float | None:
    """Wall time the records took to answer (their shares of their batches); None for records
    stored before the share was kept."""
    shares = [r.get("wall_s") for r in records]
    return float(sum(shares)) if shares and all(s is not None for s in shares) else None


def usage_metrics(records: Sequence[dict], max_new_tokens: int | None = None) -> dict[str, float]:
    """``prompt_tokens_total``, ``completion_tokens_total`` and ``truncated_answers`` over the
    answered records (where the engine reports them), with one warning when answers were cut off."""
    answered = [r for r in records if not r.get("skipped") and "truncated" in r]
    if not answered:
        return {}
    metrics = {"truncated_answers": float(sum(1 for r in answered if r["truncated"]))}
    for key in ("prompt_tokens", "completion_tokens"):
        counts = [r.get(key) for r in answered]
        if any(c is not None for c in counts):
            metrics[f"{key}_total"] = float(sum(c or 0 for c in counts))
    if metrics["truncated_answers"]:
        cap = f"task.max_new_tokens={max_new_tokens}" if max_new_tokens else "the token cap"
        log.warning("%d of %d answers were cut off at %s: raise it (parse failures may be cut-off answers)",
                    int(metrics["truncated_answers"]), len(answered), cap)
    return metrics
