"""The real config composes for every group option; bad values fail fast with one clear line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO, compose_config, run_cli
from vlmexp.config.validate import validate
from vlmexp.errors import ConfigError
from vlmexp.paths import conf_dir, experiments_dir

GROUPS = ["model", "task", "engine", "hardware", "logger", "trainer"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert set(resolved) >= {"mode", "seed", "task", "model", "engine", "hardware", "logger", "data", "train"}
    if group == "model":
        assert cfg.model.name == option
        assert cfg.model.hf_id or cfg.model.local_builder
    if group in ("engine", "logger", "task"):
        assert cfg[group]._target_.startswith("vlmexp.")


def test_model_configs_name_real_ids_only():
    ids = {compose_config([f"model={m}"]).model.hf_id for m in options("model")}
    assert "Qwen/Qwen2-VL-0.5B-Instruct" not in ids and "Qwen/Qwen2-VL-1.5B-Instruct" not in ids
    qwen7b = compose_config(["model=qwen7b"]).model
    assert (qwen7b.hf_id, qwen7b.ollama_tag) == ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2.5vl:7b")
    assert compose_config(["model=moondream2"]).model.trust_remote_code is True
    others = [m for m in options("model") if m != "moondream2"]
    assert not any(compose_config([f"model={m}"]).model.trust_remote_code for m in others)


def test_quickstart_defaults():
    cfg = compose_config([])
    assert (cfg.task.name, cfg.model.name, cfg.engine._target_) == ("smoke", "tiny", "vlmexp.engines.hf.HFEngine")
    assert cfg.mode.value == "train_eval"
    assert compose_config(["model=qwen7b"]).mode.value == "eval"  # the smoke task's own default
    assert compose_config(["mode=eval"]).mode.value == "eval"


@pytest.mark.parametrize("name", sorted(p.stem for p in experiments_dir().glob("*.yaml")))
def test_every_experiment_preset_composes(name):
    cfg = compose_config([f"+experiment={name}"])
    OmegaConf.to_container(cfg, resolve=True)
    validate_without_paths(cfg)


def validate_without_paths(cfg):
    """Presets point at the user's data; check everything but path existence."""
    for key in ("root", "train_root", "val_root", "train_file", "val_file", "test_file", "image_dir"):
        cfg.data[key] = None
    validate(cfg)


@pytest.mark.parametrize("overrides,needle", [
    (["data.limit=-3"], "data.limit=-3"),
    (["data.root=/no/such/folder"], "data.root=/no/such/folder"),
    (["data.frame_stride=0"], "data.frame_stride=0"),
    (["train.lr=-1"], "train.lr=-1"),
    (["+task.smoke_clases=[1]"], "task.smoke_clases"),
    (["+engine.max_new_token=3"], "engine.max_new_token"),
    (["trainer=classifier"], "trainer: task.trainer is SFTTrainer, which reads trainer=sft settings"),
])
def test_validate_names_the_bad_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace(".", r"\.")):
        validate(compose_config(overrides))


@pytest.mark.parametrize("args,needle", [
    (["engine=olama"], "engine=olama: no such option"),
    (["data.limit=-3"], "data.limit=-3"),
    (["data.root=/no/such/folder"], "data.root=/no/such/folder"),
    (["train.lr=fast"], "train.lr"),
    (["mode=evaluate"], "mode"),
    (["+task.smoke_clases=[1]"], "task.smoke_clases"),
    (["train.stages=[{backbone: full}]"], "train.stages"),  # the SFT trainer has no stages
])
def test_cli_rejects_bad_config_in_seconds(tmp_path, args, needle):
    began = time.perf_counter()
    result = run_cli([*args, f"paths.cache_dir={tmp_path}"], cwd=tmp_path)
    elapsed = time.perf_counter() - began
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert needle in result.stderr
    assert elapsed < 60  # generous for a loaded CI machine; nothing heavy is imported or built
    assert not (tmp_path / "models").exists()  # no model was built


def test_cfg_job_prints_config_without_heavy_imports(tmp_path):
    result = run_cli(["--cfg", "job", "task=smoke", "model=qwen7b", "engine=ollama"], cwd=tmp_path,
                     env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.engine._target_ == "vlmexp.engines.ollama.OllamaEngine"
    assert printed.model.ollama_tag == "qwen2.5vl:7b"
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "transformers", "mlflow", "cv2"}


def test_conf_is_found_from_any_working_directory(tmp_path):
    assert conf_dir() == REPO / "conf"
    result = run_cli(["--cfg", "job"], cwd=Path(tmp_path))
    assert result.returncode == 0 and "name: tiny" in result.stdout
