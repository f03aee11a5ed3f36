"""The smoke task's config: the two Early-Fire presets, and bad values failing with one clear line."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import compose_config, run_cli
from vlmexp.config.validate import check_target_keys
from vlmexp.errors import ConfigError


@pytest.mark.parametrize("preset, engine", [("early_fire_qwen7b_hf", "vlmexp.engines.hf.HFEngine"),
                                            ("early_fire_qwen7b_ollama", "vlmexp.engines.ollama.OllamaEngine")])
def test_presets_compose_seed_002s_benchmark(preset, engine):
    cfg = compose_config([f"+experiment={preset}", "data.root=/data/figlib"])
    assert cfg.engine._target_ == engine
    assert (cfg.task.name, cfg.model.name, cfg.model.hf_id) == ("smoke", "qwen7b", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert str(cfg.mode.value) == "eval"
    assert cfg.task.iou_threshold == 0.4 and cfg.task.calibration and cfg.task.localisation
    assert cfg.task.robustness and cfg.task.explain
    assert (cfg.data.format, cfg.data.frame_stride, cfg.data.root) == ("sequences", 3, "/data/figlib")
    assert cfg.model.max_pixels == 1280 * 28 * 28
    check_target_keys(cfg.task, "task")  # every key the presets set is a SmokeTask argument
    task = instantiate(cfg.task, _recursive_=False)
    assert task.robustness and task.explain and task.scoring.iou_threshold == 0.4


def test_presets_score_latency_the_same_way():
    budgets = {compose_config([f"+experiment={p}"]).task.latency_budget_s
               for p in ("early_fire_qwen7b_hf", "early_fire_qwen7b_ollama")}
    assert budgets == {1.0}


@pytest.mark.parametrize("override, message", [
    ("task.bad_json=drop", "task.bad_json=drop: expected 'negative' or 'discard'"),
    ("task.iou_threshold=1.5", "task.iou_threshold=1.5: must be in (0, 1]"),
    ("+task.score_weights.speed=1", "task.score_weights="),
    ("task.score_weights.latency=-1", "task.score_weights="),
    ("task.latency_budget_s=0", "task.latency_budget_s=0: must be > 0"),
    ("task.robustness_shake=0.7", "task.robustness_shake=0.7: must be in [0, 0.5)"),
    ("task.robustness_blur=-1", "task.robustness_blur=-1: must be in [0, 0.5)"),
])
def test_bad_task_values_fail_with_the_key(override, message):
    task = instantiate(compose_config([override]).task, _recursive_=False)
    with pytest.raises(ConfigError) as err:
        task.check_settings()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cli_reports_a_bad_task_value_in_one_line(tmp_path):
    result = run_cli(["task.bad_json=drop", "mode=eval", f"paths.cache_dir={tmp_path}", "logger=none",
                      f"hydra.run.dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: task.bad_json=drop: expected 'negative' or 'discard'"


def test_unknown_task_key_is_caught_before_running():
    with pytest.raises(ConfigError, match="task.robustnes: unknown key for SmokeTask"):
        check_target_keys(compose_config(["+task.robustnes=true"]).task, "task")
