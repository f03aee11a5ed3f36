"""Binary task: JSONL loading, config checks and composition (no model is built here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import compose_config
from vlmexp.config.validate import validate
from vlmexp.data.binary import load_binary_jsonl
from vlmexp.data.jsonl import MissingImages, read_jsonl
from vlmexp.errors import ConfigError, DataError
from vlmexp.models.classifier_spec import HeadConfig
from vlmexp.trainers.stages import resolve_stages


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(path)
    return path


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_loads_samples_resolving_relative_and_absolute_paths(tmp_path):
    rel = _image(tmp_path / "imgs" / "a.png")
    absolute = _image(tmp_path / "elsewhere" / "b.png")
    jsonl = _write(tmp_path / "train.jsonl", [
        {"image_path": "imgs/a.png", "text": "smoke?", "label": 1},
        "",
        {"image_path": str(absolute), "text": "clear?", "label": 0},
    ])
    missing = MissingImages()
    samples = load_binary_jsonl(jsonl, "train", missing)
    assert [(s.id, s.path, s.text, s.label) for s in samples] == [
        ("train:1", rel, "smoke?", 1), ("train:3", absolute, "clear?", 0)]
    assert samples[0].source == f"{jsonl}:1"
    assert missing.count == 0


def test_missing_images_are_skipped_and_counted(tmp_path):
    _image(tmp_path / "a.png")
    jsonl = _write(tmp_path / "val.jsonl", [
        {"image_path": "gone1.png", "text": "", "label": 0},
        {"image_path": "a.png", "text": "", "label": 1},
        {"image_path": "gone2.png", "text": "", "label": 1},
    ])
    missing = MissingImages()
    samples = load_binary_jsonl(jsonl, "val", missing)
    assert [s.id for s in samples] == ["val:2"]
    assert missing.count == 2


def test_limit_caps_the_usable_samples(tmp_path):
    _image(tmp_path / "a.png")
    jsonl = _write(tmp_path / "t.jsonl", [{"image_path": "a.png", "text": "q", "label": i % 2} for i in range(5)])
    assert [s.id for s in load_binary_jsonl(jsonl, "test", MissingImages(), limit=2)] == ["test:1", "test:2"]


@pytest.mark.parametrize(("line", "message"), [
    ('{"image_path": "a.png", "text": "q", "label": 1', "not valid JSON"),
    ('["a.png", "q", 1]', "expected a JSON object, got list"),
    ({"image_path": "a.png", "label": 1}, "missing key 'text'"),
    ({"image_path": "a.png", "text": "q", "label": 2}, "key 'label' must be 0 or 1, got 2"),
    ({"image_path": "a.png", "text": "q", "label": "1"}, 'key \'label\' must be int, got "1"'),
    ({"image_path": "a.png", "text": "q", "label": True}, "key 'label' must be int, got true"),
    ({"image_path": 7, "text": "q", "label": 0}, "key 'image_path' must be str, got 7"),
    ({"image_path": " ", "text": "q", "label": 0}, "key 'image_path' is empty"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    _image(tmp_path / "a.png")
    jsonl = _write(tmp_path / "bad.jsonl", [{"image_path": "a.png", "text": "ok", "label": 0}, "", line])
    with pytest.raises(DataError) as err:
        load_binary_jsonl(jsonl, "train", MissingImages())
    assert str(err.value).startswith(f"{jsonl}:3: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_file_with_no_usable_sample_is_an_error(tmp_path):
    jsonl = _write(tmp_path / "t.jsonl", [{"image_path": "gone.png", "text": "q", "label": 0}])
    with pytest.raises(DataError, match="no usable samples"):
        load_binary_jsonl(jsonl, "test", MissingImages())
    with pytest.raises(DataError, match="no such file"):
        list(read_jsonl(tmp_path / "absent.jsonl"))


def test_head_config_checks_keys_and_values():
    assert HeadConfig.from_mapping(None) == HeadConfig(512, 0.1, "mean")
    assert HeadConfig.from_mapping({"pooling": "last", "hidden_dim": 64, "dropout": 0.0}).pooling == "last"
    with pytest.raises(ConfigError, match=r"task.head.pooling=max: expected one of mean, last"):
        HeadConfig.from_mapping({"pooling": "max"})
    with pytest.raises(ConfigError, match=r"task.head.hiden_dim: unknown key"):
        HeadConfig.from_mapping({"hiden_dim": 3})
    with pytest.raises(ConfigError, match=r"task.head.dropout=1.5"):
        HeadConfig.from_mapping({"dropout": 1.5})


def test_stages_override_the_train_block():
    cfg = compose_config(["task=binary", "train.lr=0.003",
                          "train.stages=[{backbone: frozen},{name: tune, backbone: lora, lr: 1e-5, epochs: 2, "
                          "lora: {r: 4}}]"])
    head, tune = resolve_stages(cfg.train)
    assert (head.name, head.backbone, head.train.lr, head.train.epochs, head.train.lora.r) == (
        "stage1", "frozen", 0.003, cfg.train.epochs, 16)
    assert (tune.name, tune.backbone, tune.train.lr, tune.train.epochs, tune.train.lora.r) == (
        "tune", "lora", 1e-5, 2, 4)
    assert [s.backbone for s in resolve_stages(compose_config(["task=binary", "train.stages=[]"]).train)] == ["frozen"]


@pytest.mark.parametrize(("stages", "message"), [
    ("[{backbone: partly}]", r"train.stages\[0\].backbone=partly: expected one of frozen, full, lora"),
    ("[{backbone: frozen},{lrr: 1}]", r"train.stages\[1\].lrr: unknown key"),
    ("[{lr: fast}]", r"train.stages\[0\]: "),
    ("[{epochs: 0}]", r"train.stages\[0\].epochs=0: must be >= 1"),
    ("[{backbone: lora, lora: {quant_bits: 4}}]", r"quantise it with hardware.quantization"),
])
def test_bad_stage_fails_with_one_line(stages, message):
    cfg = compose_config(["task=binary", f"train.stages={stages}"])
    with pytest.raises(ConfigError, match=message) as err:
        resolve_stages(cfg.train)
    assert "\n" not in str(err.value)


def test_task_composes_and_validates_with_data_files(tmp_path):
    files = {split: _write(tmp_path / f"{split}.jsonl", []) for split in ("train", "val", "test")}
    cfg = compose_config(["task=binary", "model=tiny"] + [f"data.{k}_file={v}" for k, v in files.items()])
    validate(cfg)
    assert cfg.mode == "train_eval"
    assert cfg.task._target_ == "vlmexp.tasks.binary.BinaryTask"
    assert cfg.task.trainer._target_ == "vlmexp.trainers.classifier.ClassifierTrainer"
    assert dict(cfg.task.head) == {"pooling": "mean", "hidden_dim": 512, "dropout": 0.1}
    assert [dict(s) for s in cfg.train.stages] == [{"name": "head", "backbone": "frozen"}]


@pytest.mark.parametrize(("override", "message"), [
    ("+task.trainer.class_weight=[1,2]", r"task.trainer.class_weight: unknown key for ClassifierTrainer"),
    ("task.class_names=[yes]", r"task.class_names=\['yes'\]: expected two different names"),
    ("task.head.pooling=max", r"task.head.pooling=max"),
    ("task.checkpoint=/nonexistent", r"task.checkpoint=/nonexistent: not a saved classifier folder"),
])
def test_bad_task_config_fails_with_one_line(override, message):
    from hydra.utils import instantiate

    task = instantiate(compose_config(["task=binary", override]).task, _recursive_=False)
    with pytest.raises(ConfigError, match=message):
        task.check_config()


def test_seed_001_preset_composes():
    cfg = compose_config(["+experiment=binary_qwen2vl_2b"])
    assert cfg.task.name == "binary"
    assert cfg.model.hf_id == "Qwen/Qwen2-VL-2B-Instruct"
    assert cfg.mode == "train_eval"
    assert cfg.train.lr == 1e-4
    assert [s.backbone for s in resolve_stages(cfg.train)] == ["frozen"]


def test_eval_checkpoint_must_match_the_selected_model(tmp_path):
    from hydra.utils import instantiate

    from vlmexp.runner import RunContext

    saved = tmp_path / "checkpoint"
    saved.mkdir()
    (saved / "head_config.json").write_text(json.dumps({"backbone": {"name": "qwen2_vl_2b"}}))
    _image(tmp_path / "a.png")
    test = _write(tmp_path / "test.jsonl", [{"image_path": "a.png", "text": "q", "label": 1}])
    def load(model: str):
        cfg = compose_config(["task=binary", f"model={model}", "mode=eval", f"task.checkpoint={saved}",
                              f"data.test_file={test}"])
        task = instantiate(cfg.task, _recursive_=False)
        return task.load_splits(RunContext(cfg, tmp_path / "out", tmp_path / "work", None, "test"))

    with pytest.raises(ConfigError, match=r"trained on model=qwen2_vl_2b, but model=tiny is selected"):
        load("tiny")
    assert [s.id for s in load("qwen2_vl_2b").test] == ["test:1"]
