"""Every metric of the Early-Fire benchmark for one set of smoke prediction records.

Image level (scikit-learn), localisation (:mod:`vlmexp.evaluation.detection`), sequences
(:mod:`vlmexp.evaluation.sequences`), false-positive rate per resolution bucket, cost, and the
``early_fire_score`` that folds detection quality, time-to-detect and latency into one number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vlmexp.evaluation.classification import binary_metrics, latency_metrics
from vlmexp.evaluation.detection import localisation_metrics
from vlmexp.evaluation.sequences import sequence_metrics, ttd_score
from vlmexp.evaluation.usage import wall_seconds

# Standard video heights; an image goes to the one nearest its short side (160x120 -> 240p).
RESOLUTION_BUCKETS = (240, 360, 480, 720, 1080, 1440, 2160)
SCORE_TERMS = ("detection", "time_to_detect", "latency")


def resolution_bucket(width: int, height: int) -> int:
    short = min(width, height)
    return min(RESOLUTION_BUCKETS, key=lambda b: (abs(b - short), b))


def fpr_by_resolution(records: Sequence[dict]) -> dict[str, float]:
    """``fpr_<bucket>p``: false-positive rate among the clear images of each resolution bucket."""
    negatives: dict[int, list[bool]] = {}
    for r in records:
        if not r["truth"]:
            negatives.setdefault(resolution_bucket(r["width"], r["height"]), []).append(r["pred"])
    return {f"fpr_{b}p": sum(preds) / len(preds) for b, preds in sorted(negatives.items())}


def latency_score(latency_p50_s: float, budget_s: float) -> float:
    """1 for an instant answer, 0.5 at the latency budget, towards 0 beyond it."""
    return budget_s / (budget_s + latency_p50_s)


def early_fire_score(terms: Mapping[str, float | None], weights: Mapping[str, float]) -> float:
    """Weighted mean of the available terms (a None term, e.g. time-to-detect on single images,
    drops out and the other weights are renormalised)."""
    used = {k: w for k, w in weights.items() if terms.get(k) is not None and w > 0}
    total = sum(used.values())
    return sum(w * terms[k] for k, w in used.items()) / total if total else 0.0


@dataclass
class SmokeScoring:
    """How records are scored (the task's config keys)."""

    bad_json: str = "negative"  # negative | discard
    iou_threshold: float = 0.4
    calibration: bool = True
    localisation: bool = True
    score_weights: dict[str, float] = field(default_factory=lambda: dict(detection=0.5, time_to_detect=0.3,
                                                                          latency=0.2))
    latency_budget_s: float = 1.0
    alarm_k: int = 1  # the alarm: at least k of the last n frames of a sequence predicted smoke
    alarm_n: int = 1

    def scored(self, records: Sequence[dict]) -> list[dict]:
        """The evaluated records that count, with BAD_JSON answers handled as configured."""
        evaluated = [r for r in records if not r.get("skipped")]
        if self.bad_json == "discard":
            return [r for r in evaluated if r["parse_ok"]]
        return [r if r["parse_ok"] else dict(r, pred=False, pred_boxes=[]) for r in evaluated]

    def metrics(self, records: Sequence[dict]) -> dict[str, float]:
        evaluated = [r for r in records if not r.get("skipped")]
        scored = self.scored(records)
        metrics = binary_metrics([r["truth"] for r in scored], [r["pred"] for r in scored])
        metrics.update({
            "parse_success_rate": sum(r["parse_ok"] for r in evaluated) / len(evaluated) if evaluated else 0.0,
            "skipped_corrupt_images": float(len(records) - len(evaluated)),
            "num_samples": float(len(evaluated)),
            "engine_errors": float(sum(1 for r in evaluated if r.get("error"))),
        })
        metrics.update(latency_metrics([r["latency_s"] for r in evaluated], wall_seconds(evaluated)))
        if self.localisation and scored:
            metrics.update(localisation_metrics(scored, self.iou_threshold))
        metrics.update(sequence_metrics(scored, self.alarm_k, self.alarm_n))
        if self.calibration:
            metrics.update(fpr_by_resolution(scored))
        if scored:
            terms = {"detection": metrics["f1"], "time_to_detect": ttd_score(scored, self.alarm_k, self.alarm_n),
                     "latency": latency_score(metrics["latency_p50_s"], self.latency_budget_s)}
            metrics.update({"ttd_score": terms["time_to_detect"], "latency_score": terms["latency"]})
            metrics["early_fire_score"] = early_fire_score(terms, self.score_weights)
        return {k: v for k, v in metrics.items() if v is not None}


def smoke_resampling(scoring: SmokeScoring, records: Sequence[dict], suffix: str = ""):
    """f1, recall, false_positive_rate and early_fire_score (each + ``suffix``) of weighted records,
    resampled by sequence (frames of one sequence are drawn together; a single image alone)."""
    import numpy as np

    from vlmexp.evaluation.bootstrap import Resampling, binary_rates, weighted_percentile, weighted_score
    from vlmexp.evaluation.sequences import sequence_outcomes

    evaluated = [r for r in records if not r.get("skipped")]
    kept = np.array([r["parse_ok"] or scoring.bad_json != "discard" for r in evaluated], bool)
    truth = [r["truth"] for r in evaluated]
    pred = [bool(r["pred"] and r["parse_ok"]) for r in evaluated]
    latency = [r["latency_s"] for r in evaluated]
    units = [r["sequence"] if r.get("sequence") is not None else ("image", r["id"]) for r in evaluated]
    order = list(dict.fromkeys(units))  # the unit indices Resampling.indices gives
    outcomes = {o.sequence: o for o in sequence_outcomes(scoring.scored(evaluated), scoring.alarm_k,
                                                         scoring.alarm_n)}
    in_sequence = np.array([u in outcomes for u in order], float)
    smoky = np.array([u in outcomes and outcomes[u].has_smoke for u in order], float)
    early = np.array([1.0 / (1 + outcomes[u].ttd_frames) if u in outcomes and outcomes[u].detected else 0.0
                      for u in order])
    alarm = np.array([u in outcomes and outcomes[u].false_alarm for u in order], float)
    weights = scoring.score_weights

    def statistic(W: np.ndarray, C: np.ndarray) -> dict[str, np.ndarray]:
        rates = binary_rates(W * kept, truth, pred)
        with np.errstate(invalid="ignore", divide="ignore"):
            early_share = np.where(C @ smoky > 0, (C @ (smoky * early)) / (C @ smoky), np.nan)
            quiet = 1.0 - np.where(C @ in_sequence > 0, (C @ alarm) / (C @ in_sequence), 0.0)
        latency_term = scoring.latency_budget_s / (scoring.latency_budget_s + weighted_percentile(W, latency, 50))
        terms = {"detection": rates["f1"], "time_to_detect": early_share * quiet, "latency": latency_term}
        values = {k: rates[k] for k in ("f1", "recall", "false_positive_rate")}
        values["early_fire_score"] = weighted_score(terms, weights)
        return {f"{k}{suffix}": v for k, v in values.items()}

    return Resampling(units, statistic)


#: What each source reports (``by_source/<source>/<metric>``).
SOURCE_METRICS = ("accuracy", "precision", "recall", "f1", "false_positive_rate", "num_samples", "sequences_detected",
                  "sequences_missed", "false_alarm_sequences", "ttd_frames_mean", "early_fire_score")


def per_source_metrics(scoring: SmokeScoring, records: Sequence[dict], suffix: str = "") -> dict[str, float]:
    """``by_source/<source>/<metric><suffix>`` for records that name a source (``data.by_source=true``):
    a model that does well on its training domain may score far lower on another camera."""
    import re
    from dataclasses import replace

    sources = sorted({r["source"] for r in records if r.get("source") is not None})
    light = replace(scoring, localisation=False, calibration=False)
    out: dict[str, float] = {}
    for source in sources:
        name = re.sub(r"[^\w\-. ]", "_", source)  # characters MLflow accepts in a metric name
        metrics = light.metrics([r for r in records if r.get("source") == source])
        out.update({f"by_source/{name}/{k}{suffix}": metrics[k] for k in SOURCE_METRICS if k in metrics})
    return out
