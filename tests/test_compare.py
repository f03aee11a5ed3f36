"""``vlmexp compare``: two real scripted smoke runs in a real MLflow store, paired sample by sample."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import REPO, compose_config
from vlmexp.compare import compare, mcnemar_exact
from vlmexp.runner import run

SMOKE = '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2, 0.2]}'
CLEAR = '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'


def scripted_run(cache_dir, out, model: str, answer: str, limit: int = 16) -> str:
    cfg = compose_config([f"paths.cache_dir={cache_dir}", "mode=eval", "task=smoke", f"model={model}",
                          "engine._target_=tests.helpers.ScriptedEngine", f"+engine.default='{answer}'",
                          f"data.limit={limit}"])
    run(cfg, output_dir=out)
    [latest] = mlflow.search_runs(experiment_names=["smoke"], output_format="list", max_results=1,
                                  order_by=["attributes.start_time DESC"])
    return latest.info.run_id


def test_mcnemar_exact_on_a_worked_table():
    # A right/B wrong b = 1, A wrong/B right c = 5: under H0 b ~ Binomial(6, 1/2);
    # P(b <= 1) = (C(6,0) + C(6,1)) / 2^6 = 7/64, two-sided p = 2 * 7/64 = 14/64 = 0.21875.
    assert mcnemar_exact(1, 5) == pytest.approx(0.21875, abs=1e-12)
    # b = 0, c = 8: p = 2 * (1/2)^8 = 1/128
    assert mcnemar_exact(0, 8) == pytest.approx(1 / 128, abs=1e-12)
    assert mcnemar_exact(0, 0) == 1.0


def cli(*args):
    return subprocess.run([sys.executable, "-m", "vlmexp", "compare", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_compare_two_runs_on_the_same_frames(cache_dir, tmp_path):
    """A answers "smoke" on every frame, B "no smoke": every verdict differs, A is right on the smoke
    frames (McNemar's b), B on the clear ones (c)."""
    run_a = scripted_run(cache_dir, tmp_path / "a", "tiny", SMOKE)
    run_b = scripted_run(cache_dir, tmp_path / "b", "qwen7b", CLEAR)
    truth = [json.loads(line)["truth"] for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    smoke, clear = sum(truth), len(truth) - sum(truth)
    assert len(truth) == 16 and 0 < smoke < 16

    # by run names, as a user types them, through the console entry point
    done = cli("smoke tiny scripted", "smoke qwen7b scripted", "--experiment", "smoke",
               "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    assert "paired samples: 16" in done.stdout and "McNemar exact p" in done.stdout

    result = compare(run_a, run_b, out_dir=tmp_path / "cmp2", resamples=200, seed=1)
    assert (result.both_right, result.a_only, result.b_only, result.both_wrong) == (0, smoke, clear, 0)
    p = 2 * sum(math.comb(16, k) for k in range(min(smoke, clear) + 1)) / 2 ** 16
    assert result.mcnemar_p_value == pytest.approx(min(1.0, p), abs=1e-12)
    assert result.agreement_rate == 0.0
    recall = result.metrics["recall"]  # 1 for A, 0 for B on every resample
    assert (recall["a"], recall["b"], recall["diff"], recall["ci_low"], recall["ci_high"]) == (1, 0, -1, -1, -1)
    fpr = result.metrics["false_positive_rate"]
    assert (fpr["a"], fpr["b"], fpr["ci_low"], fpr["ci_high"]) == (1, 0, -1, -1)
    assert result.metrics["f1"]["a"] == pytest.approx(2 * smoke / (2 * smoke + clear))

    rows = list(csv.DictReader((tmp_path / "cmp2" / "differing_verdicts.csv").open()))
    assert len(rows) == 16 and {r["answer_a"] for r in rows} == {"smoke"} and {r["answer_b"] for r in rows} == {
        "no smoke"}
    assert sum(r["correct_a"] == "True" for r in rows) == smoke
    assert (tmp_path / "cmp2" / "differing_verdicts.png").stat().st_size > 10_000

    logged = mlflow.get_run(result.run_id)
    assert logged.data.tags["vlmexp.comparison.a"] == run_a and logged.data.tags["vlmexp.comparison.b"] == run_b
    assert logged.data.metrics["diff_recall"] == -1 and logged.data.metrics["a_right_b_wrong"] == smoke
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert artifacts == {"comparison.md", "differing_verdicts.csv", "differing_verdicts.png"}


def test_compare_refuses_runs_on_different_data(cache_dir, tmp_path):
    run_a = scripted_run(cache_dir, tmp_path / "a", "tiny", SMOKE, limit=8)
    run_b = scripted_run(cache_dir, tmp_path / "b", "tiny", CLEAR, limit=12)
    done = cli(run_a, run_b)
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: runs smoke tiny scripted (") and "not evaluated on the same data" in line
    done = cli(run_a, "no-such-run")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"error: no-such-run: no MLflow run with this id, nor a finished run with this name, in "
        f"{mlflow.get_tracking_uri()}"]
