"""What answering cost, from the stored records, so a resumed or reused evaluation reports the
whole set and not only the part this process answered: token totals, answers cut off at the token
cap, and throughput from wall time (each record holds its share of its batch's wall time, which
counts concurrent requests once, unlike a sum of per-request latencies)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from vlmexp.provenance import COST_KEYS

log = logging.getLogger(__name__)


def usage_fields(generation) -> dict:
    """The fields a task's record keeps of an engine's answer."""
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "truncated": generation.truncated, "images": len(generation.image_sizes)}


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



def cost_metrics(records: Sequence[dict], prices: dict, unit: str = "samples") -> dict[str, float]:
    """``cost_total`` and ``cost_per_1k_<unit>`` of the answered records at ``prices`` (the
    ``engine.cost_*`` keys set); empty when none is set. Records whose engine reported no token
    counts cost nothing for tokens, with one warning."""
    prices = {k: float(prices[k]) for k in COST_KEYS if prices.get(k) is not None}
    answered = [r for r in records if not r.get("skipped") and "truncated" in r]
    if not prices or not answered:
        return {}
    per_token = {"prompt_tokens": prices.get("cost_per_1k_input_tokens", 0.0) / 1000,
                 "completion_tokens": prices.get("cost_per_1k_output_tokens", 0.0) / 1000}
    total, uncounted = 0.0, 0
    for r in answered:
        for key, price in per_token.items():
            if price and r.get(key) is None:
                uncounted += 1
            total += price * (r.get(key) or 0)
        total += prices.get("cost_per_image", 0.0) * (r.get("images") or 0)
    if uncounted:
        log.warning("cost: %d token counts were not reported by the engine and cost nothing", uncounted)
    return {"cost_total": total, f"cost_per_1k_{unit}": total / len(answered) * 1000}
