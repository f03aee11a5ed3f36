"""The HF engine: batched generation and scoring give what one-at-a-time calls give."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from vlmexp.engines.hf import HFEngine
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.models.loading import load_processor


@pytest.fixture(scope="module")
def lively_model(tiny_checkpoint):
    """The tiny model with larger random weights, so greedy outputs vary with the input (the
    freshly initialised one answers nearly the same tokens for everything)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "visual" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.35)
    cfg = OmegaConf.create({"name": "tiny", "trust_remote_code": False, "min_pixels": 3136, "max_pixels": 12544})
    return model, load_processor(tiny_checkpoint, cfg)


def requests() -> list[ChatRequest]:
    colours = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 240), (10, 10, 10)]
    sizes = [(160, 120), (64, 64), (300, 100), (120, 160), (90, 90)]
    prompts = ["What colour?", "Is there smoke in this image? Answer in JSON.", "Describe the image.", "yes or no",
               "Count the objects in this image please."]
    return [ChatRequest(chat("You are a helpful assistant." if i % 2 else None, ImagePart(Image.new("RGB", s, c)),
                             TextPart(p)), max_new_tokens=12)
            for i, (c, s, p) in enumerate(zip(colours, sizes, prompts))]


def test_batched_generation_equals_one_at_a_time(lively_model):
    model, processor = lively_model
    batched = HFEngine(batch_size=5, model=model, processor=processor).generate(requests())
    single = HFEngine(batch_size=1, model=model, processor=processor).generate(requests())
    assert [g.text for g in batched] == [g.text for g in single]
    assert len({g.text for g in single}) >= 3  # the answers really depend on the inputs
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in single]


def test_reports_the_image_size_the_model_saw(lively_model):
    model, processor = lively_model
    gens = HFEngine(batch_size=5, model=model, processor=processor).generate(requests())
    # 160x120 fits 112x112 pixels as 112 x 84 (28-pixel blocks); 64x64 is scaled up to the minimum 56x56
    assert gens[0].image_sizes == [(112, 84)]
    assert gens[1].image_sizes == [(56, 56)]


def test_scoring_batched_equals_one_at_a_time_and_matches_the_model(lively_model):
    model, processor = lively_model
    candidates = ["Positive", "Negative", "maybe not"]
    batched = HFEngine(batch_size=8, model=model, processor=processor).score(requests(), candidates)
    single = HFEngine(batch_size=1, model=model, processor=processor).score(requests(), candidates)
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)
    # direct check for one pair: sum of the log-probabilities of the candidate's tokens and <|im_end|>
    engine = HFEngine(batch_size=1, model=model, processor=processor)
    request = requests()[2]
    prompt = engine._prompt_text(request)
    full = engine._encode([prompt + "Negative<|im_end|>"], [request], "right")
    n_prompt = engine._encode([prompt], [request], "right")["input_ids"].shape[1]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(**full).logits[0].float(), dim=-1)
    ids = full["input_ids"][0]
    expected = sum(float(logprobs[i - 1, ids[i]]) for i in range(n_prompt, len(ids)))
    assert batched[2][1] == pytest.approx(expected, abs=1e-4)
    assert all(s < 0 for row in batched for s in row)
