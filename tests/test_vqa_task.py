"""task=vqa through the runner: bad images counted not fatal, presets, families that cannot train."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from tests.vqa_helpers import BACKGROUND_QUESTION, write_jsonl, write_split
from vlmexp.config.validate import validate
from vlmexp.errors import ConfigError
from vlmexp.runner import run


def _with_bad_images(jsonl, bad: dict[str, bytes]):
    """Append one question per bad image file (written next to the JSONL) and one whose image is missing."""
    lines = jsonl.read_text().splitlines()
    for name, content in bad.items():
        (jsonl.parent / name).write_bytes(content)
        lines.append(f'{{"image_path": "{name}", "question": "{BACKGROUND_QUESTION}", "answer": "dark"}}')
    lines.append(f'{{"image_path": "nowhere/{jsonl.stem}.png", "question": "{BACKGROUND_QUESTION}", "answer": "dark"}}')
    write_jsonl(jsonl, lines)
    return jsonl


def test_missing_and_corrupt_images_are_counted_not_fatal(tmp_path, cache_dir, tiny_checkpoint):
    write_split(tmp_path, "probe", 1, seed=0)
    truncated = (tmp_path / "probe" / "img000.png").read_bytes()[:60]
    train = _with_bad_images(write_split(tmp_path, "train", 4, seed=1), {"train_truncated.png": truncated})
    val = _with_bad_images(write_split(tmp_path, "val", 2, seed=2), {"val_text.png": b"not an image at all"})
    test = _with_bad_images(write_split(tmp_path, "test", 2, seed=3), {"test_truncated.png": truncated})
    cfg = compose_config(["task=vqa", "model=tiny", "hardware=cpu", f"paths.cache_dir={cache_dir}",
                          f"data.train_file={train}", f"data.val_file={val}", f"data.test_file={test}",
                          "train.epochs=1", "train.batch_size=3", "task.max_new_tokens=4"])
    metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["skipped_missing_images"] == 3  # one per file
    assert metrics["skipped_corrupt_images"] == 3  # train (while training), val and test
    assert metrics["val_questions"] == 4 and metrics["test_questions"] == 4
    assert 0.0 <= metrics["exact_match"] <= 1.0 and 0.0 <= metrics["test_exact_match"] <= 1.0
    table = (tmp_path / "out" / "vqa_samples.csv").read_text().splitlines()
    assert table[0] == "split,id,image,question,answer,prediction,correct"
    assert len(table) == 1 + 8


def _data_overrides(tmp_path):
    return [f"data.train_file={write_split(tmp_path, 'train', 2, seed=1)}",
            f"data.val_file={write_split(tmp_path, 'val', 1, seed=2)}"]


def test_llava_lora_preset_composes_as_seed_003():
    cfg = compose_config(["+experiment=llava_lora"])
    validate(cfg)
    assert (cfg.task.name, cfg.model.hf_id, cfg.data.format) == ("vqa", "llava-hf/llava-1.5-7b-hf", "llava")
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lora.enabled) == (4, 3, True)
    assert cfg.train.lora.target_modules == "all-linear" and cfg.train.freeze_vision


def test_qlora_off_cuda_is_one_clear_line(tmp_path, cache_dir):
    cfg = compose_config(["task=vqa", "model=tiny", "hardware=cpu", "logger=none", f"paths.cache_dir={cache_dir}",
                          "train.lora.quant_bits=4", *_data_overrides(tmp_path)])
    with pytest.raises(ConfigError, match=r"^train.lora.quant_bits=4: QLoRA needs a CUDA GPU \(bitsandbytes\), "
                                          r"not cpu$"):
        run(cfg, output_dir=tmp_path / "out")


def test_training_needs_a_train_file(cache_dir):
    cfg = compose_config(["task=vqa", "model=tiny", "logger=none", f"paths.cache_dir={cache_dir}"])
    with pytest.raises(ConfigError, match=r"^mode=train_eval needs data.train_file"):
        run(cfg)
