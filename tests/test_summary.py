"""summary.md: one scripted smoke run logs the results with intervals, the data, and the model and
engine as used; a second run with another prompt differs in the prompt hash only where it should."""

from __future__ import annotations

import hashlib
import json

import mlflow

from tests.conftest import compose_config
from vlmexp.runner import run

SMOKE = '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2, 0.2]}'


def summary_of(run_id: str, tmp_path) -> str:
    path = mlflow.MlflowClient().download_artifacts(run_id, "summary.md", str(tmp_path))
    return open(path, encoding="utf-8").read()


def test_summary_md_names_results_data_model_and_engine(cache_dir, tmp_path):
    base = [f"paths.cache_dir={cache_dir}", "mode=eval", "task=smoke", "engine._target_=tests.helpers.ScriptedEngine",
            f"+engine.default='{SMOKE}'", "data.limit=16"]
    cfg = compose_config(base)
    metrics = run(cfg, output_dir=tmp_path / "a")
    [logged] = mlflow.search_runs(experiment_names=["smoke"], output_format="list")
    text = summary_of(logged.info.run_id, tmp_path / "dl")
    assert text == (tmp_path / "a" / "summary.md").read_text()
    f1 = f"{metrics['f1']:.4f} [{metrics['f1_ci_low']:.4f}, {metrics['f1_ci_high']:.4f}]"
    assert f"| f1 | {f1} |" in text and "| recall | 1.0000 [1.0000, 1.0000] |" in text
    assert "Intervals: 95% bootstrap, 1000 resamples, seed 42." in text
    tags = logged.data.tags
    assert f"- dataset fingerprint: `{tags['vlmexp.dataset_fingerprint']}`" in text
    assert f"- content fingerprint: `{tags['vlmexp.data_fingerprint']}`" in text
    assert "- samples: test 16" in text and "- skipped: skipped_corrupt_images 0" in text
    prompts = json.dumps({"system_prompt": cfg.task.system_prompt, "user_prompt": cfg.task.user_prompt,
                          "explain_prompt": cfg.task.explain_prompt}, sort_keys=True)
    digest = hashlib.sha256(prompts.encode()).hexdigest()[:16]
    assert f"- prompt hash: `{digest}` (sha256 of task.explain_prompt, task.system_prompt, task.user_prompt)" in text
    assert "- pixel budget: min_pixels 3136 (4 visual tokens), max_pixels 12544 (16 visual tokens)" in text
    assert "- model: `tiny` (local builder), revision: `default`, dtype: float32" in text
    assert "- engine: `tests.helpers.ScriptedEngine`" in text and "task.max_new_tokens=64" in text

    other = compose_config([*base, "task.user_prompt=Smoke?"])
    run(other, output_dir=tmp_path / "b")
    text_b = (tmp_path / "b" / "summary.md").read_text()
    assert f"prompt hash: `{digest}`" not in text_b and "- prompt hash: `" in text_b
