"""Bootstrap intervals: the vectorised statistics of every task equal its compute_metrics resample by
resample; clustering by sequence widens the interval where frames of a sequence go together; a real
run logs the intervals and shows them in its table."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config
from vlmexp.evaluation.bootstrap import Resampling, binary_rates, intervals, point_values, resample_counts
from vlmexp.runner import run


def task_of(*overrides):
    return instantiate(compose_config(list(overrides)).task, _recursive_=False)


def naive_intervals(task, records, resampling, resamples, seed, names):
    """The slow way: expand each resample into records (a unit drawn twice: its records twice, under a
    new id and sequence) and call the task's own compute_metrics on it."""
    codes, units = resampling.indices()
    values = {name: [] for name in names}
    for row in resample_counts(units, resamples, seed):
        drawn = []
        for unit, count in enumerate(row.astype(int)):
            for copy in range(count):
                for r in (r for r, c in zip(resampling_records(records), codes) if c == unit):
                    seq = r.get("sequence")
                    drawn.append(dict(r, id=f"{r['id']}#{copy}", sequence=None if seq is None else f"{seq}#{copy}"))
        metrics = task.compute_metrics(drawn)
        for name in names:
            values[name].append(metrics.get(name, np.nan))
    out = {}
    for name, v in values.items():
        low, high = np.nanquantile(np.array(v, float), [0.025, 0.975])
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out


def resampling_records(records):
    return [r for r in records if not r.get("skipped")]


def smoke_records():
    """3 sequences of 4 frames and 2 single images; a BAD_JSON answer; latencies all different."""
    rows = []
    truth = {"s1": [0, 0, 1, 1], "s2": [0, 1, 1, 1], "s3": [0, 0, 0, 0]}
    pred = {"s1": [0, 1, 1, 1], "s2": [0, 0, 0, 1], "s3": [1, 0, 0, 0]}
    for seq in truth:
        for i, (t, p) in enumerate(zip(truth[seq], pred[seq])):
            rows.append({"id": f"{seq}/{i}", "sequence": seq, "frame": i, "time_s": float(i), "truth": bool(t),
                         "pred": bool(p), "parse_ok": not (seq == "s2" and i == 1), "width": 160, "height": 120,
                         "latency_s": 0.1 * (len(rows) + 1), "wall_s": 0.1, "true_boxes": [], "pred_boxes": []})
    for i, (t, p) in enumerate([(1, 1), (0, 1)]):
        rows.append({"id": f"img{i}", "sequence": None, "frame": 0, "time_s": None, "truth": bool(t), "pred": bool(p),
                     "parse_ok": True, "width": 640, "height": 480, "latency_s": 0.05 * (i + 1), "wall_s": 0.1,
                     "true_boxes": [], "pred_boxes": []})
    rows.append({"id": "gone", "sequence": None, "frame": 0, "skipped": "unreadable"})
    return rows


@pytest.mark.parametrize("bad_json", ["negative", "discard"])
def test_smoke_intervals_equal_compute_metrics_on_each_resample(bad_json):
    task = task_of("task=smoke", "task.localisation=false", f"task.bad_json={bad_json}")
    records = smoke_records()
    [resampling] = task.resamplings(records)
    names = ["f1", "recall", "false_positive_rate", "early_fire_score"]
    metrics = task.compute_metrics(records)
    assert point_values(resampling) == pytest.approx({k: metrics[k] for k in names}, abs=1e-12)
    got = intervals(resampling, 60, seed=3)
    assert got == pytest.approx(naive_intervals(task, records, resampling, 60, 3, names), abs=1e-12)
    assert resampling.indices()[1] == 5  # 3 sequences + 2 single images are the units


def test_sentiment_vqa_binary_intervals_equal_compute_metrics_on_each_resample():
    labels = ["Positive", "Negative", "Neutral"]
    sentiment = [{"id": f"v{i}", "true_label": labels[i % 3], "predicted_label": labels[(i * i) % 3],
                  "parse_ok": True, "latency_s": 0.1, "wall_s": 0.1} for i in range(10)]
    task = task_of("task=sentiment")
    [resampling] = task.resamplings(sentiment)
    names = ["weighted_accuracy", "f1_weighted"]
    assert point_values(resampling) == pytest.approx({k: task.compute_metrics(sentiment)[k] for k in names})
    assert intervals(resampling, 50, 1) == pytest.approx(naive_intervals(task, sentiment, resampling, 50, 1, names))

    vqa = [{"id": f"q{i}", "split": "val" if i < 6 else "test", "prediction": "yes" if i % 3 else "no",
            "answer": "yes", "latency_s": 0.1, "wall_s": 0.1} for i in range(10)]
    task = task_of("task=vqa")
    [resampling] = task.resamplings(vqa)
    names = ["exact_match", "test_exact_match"]
    assert point_values(resampling) == pytest.approx({k: task.compute_metrics(vqa)[k] for k in names})
    assert intervals(resampling, 50, 2) == pytest.approx(naive_intervals(task, vqa, resampling, 50, 2, names))

    # ties in the scores, and resamples holding one class (roc_auc undefined there, left out)
    binary = [{"id": f"b{i}", "truth": int(i < 3), "pred": int(p > 0.5), "prob": p}
              for i, p in enumerate([0.9, 0.6, 0.3, 0.6, 0.2, 0.7, 0.1, 0.3])]
    task = task_of("task=binary")
    [resampling] = task.resamplings(binary)
    names = ["accuracy", "f1", "roc_auc"]
    assert point_values(resampling) == pytest.approx({k: task.compute_metrics(binary)[k] for k in names})
    assert intervals(resampling, 80, 4) == pytest.approx(naive_intervals(task, binary, resampling, 80, 4, names))


def two_sequences():
    """Sequence A: 4 smoke frames, all found; sequence B: 4 smoke frames, all missed."""
    return [{"id": f"{seq}/{i}", "sequence": seq, "frame": i, "time_s": None, "truth": True, "pred": seq == "A",
             "parse_ok": True, "width": 160, "height": 120, "latency_s": 0.1, "wall_s": 0.1}
            for seq in "AB" for i in range(4)]


def test_clustering_by_sequence_widens_the_interval():
    """Recall is 0.5. Drawing sequences, a resample is AA (recall 1), AB (0.5) or BB (0), with
    probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1]. Drawing frames as if independent, recall
    is (A frames drawn)/8 ~ Binomial(8, 1/2)/8, whose 2.5% and 97.5% points are 1/8 and 7/8."""
    task = task_of("task=smoke", "task.localisation=false")
    records = two_sequences()
    [by_sequence] = task.resamplings(records)
    got = intervals(by_sequence, 1000, seed=0)
    assert (got["recall_ci_low"], got["recall_ci_high"]) == (0.0, 1.0)
    truth, pred = [r["truth"] for r in records], [r["pred"] for r in records]
    by_frame = Resampling([r["id"] for r in records], lambda W, C: binary_rates(W, truth, pred))
    got = intervals(by_frame, 1000, seed=0)
    assert (got["recall_ci_low"], got["recall_ci_high"]) == (0.125, 0.875)
    assert intervals(by_sequence, 0, seed=0) == {}  # eval.bootstrap=0: off


def test_a_run_logs_intervals_and_shows_them_in_its_table(cache_dir, tmp_path, capsys):
    import mlflow

    answer = '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2, 0.2]}'
    base = [f"paths.cache_dir={cache_dir}", "mode=eval", "engine._target_=tests.helpers.ScriptedEngine",
            "engine.batch_size=8", "+engine.varied=['" + answer + "','{\"has_smoke\": false, \"bbox\": [0,0,0,0]}']",
            "data.limit=40"]
    metrics = run(compose_config(base), output_dir=tmp_path / "a")
    for key in ("f1", "recall", "false_positive_rate", "early_fire_score"):
        assert metrics[f"{key}_ci_low"] <= metrics[key] <= metrics[f"{key}_ci_high"]
    assert metrics["f1_ci_low"] < metrics["f1_ci_high"]
    table = capsys.readouterr().out
    f1_line = next(line for line in table.splitlines() if line.startswith("f1 "))
    assert f1_line.split(None, 1)[1] == (f"{metrics['f1']:.4f} [{metrics['f1_ci_low']:.4f}, "
                                         f"{metrics['f1_ci_high']:.4f}]")
    [logged] = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    assert logged.data.metrics["test/f1_ci_high"] == metrics["f1_ci_high"]
    again = run(compose_config([*base, "eval.bootstrap=0"]), output_dir=tmp_path / "b")  # same predictions
    assert not [k for k in again if k.endswith(("_ci_low", "_ci_high"))]
    assert again["f1"] == metrics["f1"]
