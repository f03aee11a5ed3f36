"""Bootstrap confidence intervals for a task's headline metrics, computed once for all resamples.

A task describes its metrics as a :class:`Resampling`: the resampling unit of each record (its
sequence where frames of one sequence are not independent, else the record itself) and a statistic
that turns resample weights into metric values. A resample is a draw of as many units as there are,
with replacement; it is held as counts (how often each unit was drawn), so every metric of every
resample comes from a few matrix products instead of a call of ``compute_metrics`` per resample.
The same counts drive the paired bootstrap of ``vlmexp compare`` (both runs' records, one draw).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: (record weights (B, n), unit counts (B, units)) -> metric name -> value per resample (B,)
Statistic = Callable[[np.ndarray, np.ndarray], Mapping[str, np.ndarray]]


@dataclass
class Resampling:
    """How to resample a set of records: ``units[i]`` is the unit record ``i`` belongs to (records
    of one unit are drawn together); ``statistic`` gives the metrics of weighted records."""

    units: Sequence
    statistic: Statistic

    def indices(self) -> tuple[np.ndarray, int]:
        """Each record's unit as an index 0..S-1 (in order of first appearance), and S."""
        index: dict = {}
        codes = np.array([index.setdefault(u, len(index)) for u in self.units], dtype=np.int64)
        return codes, len(index)


def resample_counts(units: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, units): how often each unit is drawn in each resample of ``units`` draws."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(units, np.full(units, 1.0 / units), size=resamples).astype(float)


def intervals(resampling: Resampling, resamples: int, seed: int, confidence: float = 0.95,
              batch: int = 250) -> dict[str, float]:
    """``<metric>_ci_low`` / ``<metric>_ci_high``: percentile interval of each metric over
    ``resamples`` resamples (nothing when off, with fewer than two units, or for a metric undefined on
    every resample). Resamples where a metric is undefined (NaN) are left out of its interval."""
    codes, units = resampling.indices()
    if resamples <= 0 or units < 2:
        return {}
    counts = resample_counts(units, resamples, seed)
    values: dict[str, list[np.ndarray]] = {}
    for start in range(0, resamples, batch):  # bounded memory: (batch, records) weights at a time
        block = counts[start:start + batch]
        for name, value in resampling.statistic(block[:, codes], block).items():
            values.setdefault(name, []).append(np.asarray(value, float))
    alpha = (1.0 - confidence) / 2
    out: dict[str, float] = {}
    for name, parts in values.items():
        stats = np.concatenate(parts)
        if np.isnan(stats).all():
            continue
        low, high = np.nanquantile(stats, [alpha, 1.0 - alpha])
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(low), float(high)
    return out


def point_values(resampling: Resampling) -> dict[str, float]:
    """The statistic on the records as they are (every weight 1): equals the task's metrics."""
    codes, units = resampling.indices()
    ones = np.ones((1, units))
    return {k: float(np.asarray(v)[0]) for k, v in resampling.statistic(ones[:, codes], ones).items()}


# -- weighted statistics: each takes record weights W (B, n) and per-record arrays (n,) ----------------
def _ratio(num: np.ndarray, den: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """num / den, ``empty`` where den is 0 (scikit-learn's zero_division)."""
    out = np.full(np.broadcast(num, den).shape, empty, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


def weighted_mean(W: np.ndarray, x: Sequence[float], empty: float = np.nan) -> np.ndarray:
    x = np.asarray(x, float)
    return _ratio(W @ x, W.sum(axis=1), empty)


def binary_rates(W: np.ndarray, truth: Sequence[bool], pred: Sequence[bool]) -> dict[str, np.ndarray]:
    """accuracy, precision, recall, f1 and false_positive_rate as
    :func:`vlmexp.evaluation.classification.binary_metrics` gives them (0 where undefined)."""
    y, p = np.asarray(truth, bool), np.asarray(pred, bool)
    tp, fp = W @ (y & p), W @ (~y & p)
    fn, tn = W @ (y & ~p), W @ (~y & ~p)
    return {"accuracy": _ratio(tp + tn, tp + tn + fp + fn), "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "false_positive_rate": _ratio(fp, fp + tn)}


def label_rates(W: np.ndarray, truth: Sequence, pred: Sequence) -> dict[str, np.ndarray]:
    """Multi-class ``weighted_accuracy`` (mean recall over the classes present: scikit-learn's
    accuracy with ``compute_sample_weight("balanced")``) and ``f1_weighted`` (per-class F1 weighted by
    support), as :func:`vlmexp.tasks.sentiment_report.label_metrics` gives them."""
    labels = sorted(set(truth) | set(pred), key=str)
    t = np.array([[x == c for c in labels] for x in truth], float).reshape(len(truth), len(labels))
    p = np.array([[x == c for c in labels] for x in pred], float).reshape(len(pred), len(labels))
    support, predicted, hits = W @ t, W @ p, W @ (t * p)
    present = support > 0
    recall = _ratio(hits, support)
    weighted_accuracy = _ratio((recall * present).sum(axis=1), present.sum(axis=1))
    f1 = _ratio(2 * hits, support + predicted)
    return {"weighted_accuracy": weighted_accuracy,
            "f1_weighted": _ratio((f1 * support).sum(axis=1), support.sum(axis=1))}


def roc_auc(W: np.ndarray, truth: Sequence[bool], score: Sequence[float]) -> np.ndarray:
    """Area under the ROC curve of weighted records (ties count one half), NaN where a resample holds
    one class only; equals scikit-learn's ``roc_auc_score`` at unit weights."""
    y, s = np.asarray(truth, bool), np.asarray(score, float)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # groups of tied scores
    Ws = W[:, order]
    pos = np.add.reduceat(Ws * y[order], starts, axis=1)
    neg = np.add.reduceat(Ws * ~y[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each group
    pairs = (pos * (below + 0.5 * neg)).sum(axis=1)
    return _ratio(pairs, pos.sum(axis=1) * neg.sum(axis=1), np.nan)


def weighted_percentile(W: np.ndarray, x: Sequence[float], q: float) -> np.ndarray:
    """``np.percentile(resample, q)`` (linear) of the resample whose counts are ``W``, per row."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    v, c = x[order], W[:, order]
    cum = np.cumsum(c, axis=1)
    h = (cum[:, -1] - 1) * q / 100.0
    lo = np.floor(h)
    idx_lo = np.minimum((cum <= lo[:, None]).sum(axis=1), len(v) - 1)
    idx_hi = np.minimum((cum <= lo[:, None] + 1).sum(axis=1), len(v) - 1)
    return v[idx_lo] + (h - lo) * (v[idx_hi] - v[idx_lo])


def weighted_score(terms: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """:func:`vlmexp.evaluation.smoke_metrics.early_fire_score` per resample: the weighted mean of
    the terms defined there (a NaN term drops out and the other weights are renormalised)."""
    num = den = 0.0
    for key, w in weights.items():
        if w > 0 and key in terms:
            value = np.asarray(terms[key], float)
            defined = ~np.isnan(value)
            num = num + np.where(defined, w * np.nan_to_num(value), 0.0)
            den = den + np.where(defined, w, 0.0)
    return _ratio(np.asarray(num, float), np.asarray(den, float))


def confidence_intervals(task, records: list[dict], resamples: int, seed: int,
                         confidence: float = 0.95) -> dict[str, float]:
    """Intervals of every headline metric the task describes (``Task.resamplings``)."""
    if resamples <= 0:
        return {}
    out: dict[str, float] = {}
    for resampling in task.resamplings(records):
        out.update(intervals(resampling, resamples, seed, confidence))
    return out


def paired_differences(a: Resampling, b: Resampling, resamples: int, seed: int, confidence: float = 0.95,
                       batch: int = 250) -> dict[str, dict[str, float]]:
    """For each metric both give, on the same units (one draw for both runs): ``a``, ``b``,
    ``diff`` (b - a) and, with resamples, ``ci_low``/``ci_high`` of the difference."""
    codes, units = a.indices()
    point_a, point_b = point_values(a), point_values(b)
    names = [k for k in point_a if k in point_b]
    out = {k: {"a": point_a[k], "b": point_b[k], "diff": point_b[k] - point_a[k]} for k in names}
    if resamples <= 0 or units < 2:
        return out
    counts = resample_counts(units, resamples, seed)
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, resamples, batch):
        block = counts[start:start + batch]
        va, vb = a.statistic(block[:, codes], block), b.statistic(block[:, codes], block)
        for k in names:
            diffs[k].append(np.asarray(vb[k], float) - np.asarray(va[k], float))
    alpha = (1.0 - confidence) / 2
    for k in names:
        values = np.concatenate(diffs[k])
        if not np.isnan(values).all():
            low, high = np.nanquantile(values, [alpha, 1.0 - alpha])
            out[k].update(ci_low=float(low), ci_high=float(high))
    return out
