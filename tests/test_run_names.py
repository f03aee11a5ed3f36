"""Run names that say what differs: the composed config's choices plus the job's own overrides."""

from __future__ import annotations

import json

from omegaconf import OmegaConf

from tests.conftest import compose_config
from vlmexp.tracking.run_names import SWEPT_FILE, run_label, shorten, sweep_label, swept_overrides


def test_keys_are_cut_to_their_last_component_unless_two_would_read_the_same():
    assert shorten(["train.lr=0.003", "train.lora.r=8", "model.lora.r=4", "+experiment=q", "hardware=cpu"]) == [
        "lr=0.003", "train.lora.r=8", "model.lora.r=4", "experiment=q", "hardware=cpu"]


def test_a_run_without_hydra_is_named_after_its_choices_and_overrides():
    cfg = compose_config(["task=smoke", "model=tiny", "train.lr=3e-3"])
    assert run_label(cfg) == "smoke tiny hf"
    overrides = ["task=smoke", "model=tiny", "engine=hf", "train.lr=3e-3", "paths.cache_dir=/x", "logger=none",
                 "hydra.verbose=true", "data.limit=4"]
    assert run_label(cfg, overrides) == "smoke tiny hf lr=3e-3 limit=4"


def test_a_sweep_job_shows_only_the_swept_keys(tmp_path):
    cfg = compose_config(["task=smoke", "model=tiny"])
    (tmp_path / SWEPT_FILE).write_text(json.dumps({"train.lr": "0.001,0.003"}))
    overrides = ["task=smoke", "model=tiny", "hardware=cpu", "train.lr=0.003", "data.synthetic.train_sequences=2"]
    assert run_label(cfg, overrides, sweep=tmp_path) == "smoke tiny hf lr=0.003"
    assert run_label(cfg, overrides, sweep=tmp_path / "none") == "smoke tiny hf hardware=cpu lr=0.003 train_sequences=2"


def test_the_sweep_is_named_after_its_swept_keys_and_a_search_space_fixed_on_the_command_line_is_not():
    config = OmegaConf.create({
        "task": {"name": "smoke"}, "model": {"name": "tiny"}, "engine": {"_target_": "vlmexp.engines.hf.HFEngine"},
        "hydra": {"overrides": {"task": ["+experiment=q", "train.epochs=1", "model=tiny,qwen7b", "train.lr=1e-3,3e-3"]},
                  "runtime": {"choices": {"engine": "ollama"}},
                  "sweeper": {"params": {"train.lora.r": "choice(4, 8)", "train.epochs": "range(5, 15, step=5)",
                                         "seed": 3}}}})
    swept = swept_overrides(config)
    assert swept == {"model": "tiny,qwen7b", "train.lr": "0.001,0.003", "train.lora.r": "choice(4, 8)"}
    assert sweep_label(config, swept) == "sweep smoke ollama: model=tiny,qwen7b lr=0.001,0.003 r=choice(4, 8)"
