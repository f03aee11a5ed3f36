"""The LLaVA-1.5 family through the same trainer: a tiny offline checkpoint of its real architecture
(CLIP vision tower, projector, Llama), whose chat template ends the answer with plain text."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import compose_config
from tests.tiny_llava import build_tiny_llava_checkpoint
from tests.vqa_helpers import write_split
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.models.adapters.transformers import IGNORE_INDEX, TransformersAdapter
from vlmexp.runner import run

build_features = TransformersAdapter().supervised_features

TINY_LLAVA = ["model=tiny", "model.name=tiny_llava",
              "model.local_builder._target_=tests.tiny_llava.build_tiny_llava_checkpoint"]


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = build_tiny_llava_checkpoint(str(tmp_path_factory.mktemp("llava-cache")))
    return AutoModelForImageTextToText.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


def test_llava_parts_are_found_by_their_transformers_names(llava):
    model, _ = llava
    parts = TransformersAdapter().parts(model)
    assert parts.vision[1] is model.model.vision_tower
    assert parts.projector[1] is model.model.multi_modal_projector
    assert parts.language == ("model.language_model", model.model.language_model)


def test_llava_mask_keeps_the_answer_and_an_eos_the_template_does_not_write(llava):
    model, processor = llava
    request = ChatRequest(chat(None, ImagePart(Image.new("RGB", (40, 30), (200, 30, 30))),
                               TextPart("What colour is the shape?")))
    features = build_features(processor, request, "dark red")
    ids, labels = features["input_ids"][0].tolist(), features["labels"][0].tolist()
    tokenizer = processor.tokenizer
    assert tokenizer.decode(ids) == "USER: " + "<image>" * 4 + "\nWhat colour is the shape? ASSISTANT: dark red" \
        + tokenizer.eos_token
    supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == " dark red" + tokenizer.eos_token
    assert supervised == ids[-len(supervised):]  # everything before the answer is masked
    assert float(model(**features).loss) > 0


def test_llava_lora_fine_tunes_and_evaluates_through_task_vqa(tmp_path):
    train, val = write_split(tmp_path, "train", 4, seed=1), write_split(tmp_path, "val", 2, seed=2)
    cfg = compose_config(["task=vqa", *TINY_LLAVA, "hardware=cpu", f"paths.cache_dir={tmp_path / 'cache'}",
                          f"data.train_file={train}", f"data.val_file={val}", "train.epochs=2",
                          "train.batch_size=4", "train.lora.enabled=true", "train.lora.r=4"])
    metrics = run(cfg, output_dir=tmp_path / "out")
    assert metrics["val_questions"] == 4 and 0.0 <= metrics["exact_match"] <= 1.0
    (checkpoint,) = (tmp_path / "cache" / "runs" / "vqa").glob("*/checkpoint")
    saved = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json"} <= saved
