"""The tiny model is a real Qwen2.5-VL checkpoint, built offline and loaded with from_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmexp.models.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_checkpoint


def test_checkpoint_is_built_once_and_cached(tiny_checkpoint, cache_dir):
    folder = Path(tiny_checkpoint)
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_checkpoint(str(cache_dir)) == tiny_checkpoint
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_build_is_deterministic(tiny_checkpoint, tmp_path):
    other = build_tiny_checkpoint(str(tmp_path))
    a, b = load_file(Path(tiny_checkpoint) / "model.safetensors"), load_file(Path(other) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (Path(tiny_checkpoint) / "tokenizer.json").read_text() == (Path(other) / "tokenizer.json").read_text()


def test_loads_through_the_auto_classes(tiny_checkpoint):
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    tok = processor.tokenizer
    for token in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(token) < model.config.text_config.vocab_size
        assert tok.tokenize(token) == [token]
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert processor.chat_template == CHAT_TEMPLATE


def test_chat_template_matches_qwen(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n<|im_start|>assistant\n")


def test_image_tokens_follow_the_pixel_budget(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint, size={"shortest_edge": 3136, "longest_edge": 12544})
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (640, 480))],
                       return_tensors="pt")
    # 640x480 scaled into 112*112 pixels, rounded to 28-pixel blocks: 84 x 112 -> 6 x 8 patches -> 12 tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 12


def test_building_the_tiny_model_leaves_the_callers_random_state_alone(tmp_path):
    """A run that builds the model must train as one that finds it in the cache."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_checkpoint(str(tmp_path))
    assert torch.equal(torch.rand(3), expected)
