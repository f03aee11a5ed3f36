"""Captioners: the engine captioner's requests (box drawn, per-class prompts), and transformers' BLIP on a
small checkpoint built here, alone and through ``python -m vlmexp task=annotate captioner=blip engine=none``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import run_cli
from tests.helpers import ScriptedEngine
from tests.shapes import write_shapes_set
from vlmexp.annotation.captioners import EngineCaptioner
from vlmexp.detectors.base import Detection, build_plugin

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "picture", "of", "glass", "on", "the", "grass",
         "red", "square", "blue", "circle", "green", "triangle"]


def test_engine_captioner_asks_about_each_object_with_its_box_drawn():
    captioner = EngineCaptioner(prompts={"glass": "a glass bottle. Describe what surface it is on."})
    image = Image.new("RGB", (100, 60), (255, 255, 255))
    found = [Detection([10, 10, 40, 30], "glass", 0.9), Detection([50, 20, 90, 50], "stone", 0.5)]
    assert captioner.prompt("glass") == "The red box marks a glass bottle. Describe what surface it is on."
    assert captioner.prompt("stone") == "The red box marks a stone. Describe where it is."
    request = captioner.request(image, found[0])
    (drawn,) = request.images
    assert drawn.getpixel((10, 20)) == (255, 0, 0) and drawn.getpixel((25, 20)) == (255, 255, 255)
    assert image.getpixel((10, 20)) == (255, 255, 255)  # the original is left as it was
    engine = ScriptedEngine(default="on a table")
    assert [[g.text for g in gens] for gens in captioner.caption(engine, [image, image], [found, []])] == \
        [["on a table", "on a table"], []]


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory) -> Path:
    """A two-layer BLIP captioning model with a 19-word WordPiece vocabulary, saved with its processor."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    text = dict(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3,
                max_position_embeddings=64, encoder_hidden_size=32)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(
        folder)
    return folder


def test_blip_captions_a_crop_around_each_box(blip_folder):
    node = OmegaConf.create({"_target_": "vlmexp.annotation.blip.BlipCaptioner", "model": str(blip_folder),
                             "prompts": {"glass": "a picture of a glass on"}, "max_new_tokens": 4, "batch_size": 2})
    captioner = build_plugin(node, None)
    image = Image.new("RGB", (100, 50), (0, 150, 0))
    assert captioner.crop(image, [10, 10, 30, 20]).size == (40, 20)  # 10 px (x) and 5 px (y) of context each side
    assert captioner.crop(image, [80, 40, 100, 50]).size == (30, 15)  # clipped at the image's edges
    found = [[Detection([10, 10, 30, 20], "glass", 0.9), Detection([50, 10, 90, 40], "square", 0.8)],
             [Detection([0, 0, 50, 50], "glass", 0.7)]]
    batched = captioner.caption(None, [image, image], found)
    texts = [[g.text for g in gens] for gens in batched]
    assert [len(t) for t in texts] == [2, 1]
    assert texts[0][0].startswith("a picture of a glass on") and texts[1][0].startswith("a picture of a glass on")
    assert texts[0][1].startswith("a picture of a square")
    captioner.batch_size = 1
    assert [[g.text for g in gens] for gens in captioner.caption(None, [image, image], found)] == texts


def test_blip_folder_that_is_not_a_model_is_one_line(tmp_path):
    node = OmegaConf.create({"_target_": "vlmexp.annotation.blip.BlipCaptioner", "model": str(tmp_path)})
    with pytest.raises(Exception) as err:
        build_plugin(node, None)
    assert str(err.value).startswith(f"captioner.model={tmp_path}: cannot load a captioning model (")


def test_annotate_with_blip_and_no_vlm(tmp_path, blip_folder):
    root, out = tmp_path / "shapes", tmp_path / "export"
    truth = write_shapes_set(root, 4, seed=2)
    result = run_cli(["task=annotate", f"data.root={root}", "captioner=blip", f"captioner.model={blip_folder}",
                      "captioner.max_new_tokens=3", "engine=none", f"task.output_dir={out}",
                      f"paths.cache_dir={tmp_path / 'cache'}", "logger=none"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    entries = json.loads((out / "annotations.json").read_text())["images"]
    objects = [o for e in entries for o in e["objects"]]
    assert len(objects) == sum(len(v) for v in truth.values()) > 0
    assert all(o["caption"].startswith(f"a picture of a {o['label']}") for o in objects)
