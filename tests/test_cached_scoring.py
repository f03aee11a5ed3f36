"""Scoring from each prompt's cached keys/values gives the log-probabilities of scoring every
(prompt, candidate) text in full, for Qwen2.5-VL's multimodal positions and LLaVA's plain ones."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.test_hf_engine import requests
from tests.tiny_llava import build_tiny_llava_checkpoint
from vlmexp.engines.hf import HFEngine
from vlmexp.models.loading import load_processor

CANDIDATES = [["yes", "no"], ["smoke", "no smoke is visible here at all", "Negative"]]


def whole_text_scores(engine: HFEngine, requests, candidates) -> list[list[float]]:
    """The reference: every prompt + candidate + end token through the model on its own, summing the
    log-probabilities of the tokens after the prompt (the implementation scoring used before caching)."""
    eos = engine.tokenizer.eos_token or ""
    scores = []
    with torch.no_grad():
        for request in requests:
            prompt = engine._prompt_text(request)
            n_prompt = engine._encode([prompt], [request], "right")["input_ids"].shape[1]
            row = []
            for candidate in candidates:
                full = engine._encode([prompt + candidate + eos], [request], "right")
                logprobs = torch.log_softmax(engine.model(**full).logits[0].double(), dim=-1)
                ids = full["input_ids"][0]
                row.append(sum(float(logprobs[i - 1, ids[i]]) for i in range(n_prompt, len(ids))))
            scores.append(row)
    return scores


def randomised(model):
    """Larger random weights, so the log-probabilities differ between prompts and candidates; float64,
    so the comparison measures the method and not float32 rounding of two summation orders."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "visual" not in name and "vision" not in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.double().eval()


@pytest.fixture(scope="module")
def qwen(tiny_checkpoint):
    from transformers import AutoModelForImageTextToText

    cfg = OmegaConf.create({"name": "tiny", "trust_remote_code": False, "min_pixels": 3136, "max_pixels": 12544})
    model = randomised(AutoModelForImageTextToText.from_pretrained(tiny_checkpoint))
    return model, load_processor(tiny_checkpoint, cfg)


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = build_tiny_llava_checkpoint(str(tmp_path_factory.mktemp("llava-cache")))
    processor = AutoProcessor.from_pretrained(folder)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return randomised(AutoModelForImageTextToText.from_pretrained(folder)), processor


@pytest.mark.parametrize("family", ["qwen", "llava"])
@pytest.mark.parametrize("candidates", CANDIDATES, ids=["one-token", "mixed-lengths"])
def test_cached_scores_equal_whole_text_scores(family, candidates, request):
    model, processor = request.getfixturevalue(family)
    reqs = requests()  # prompts of different lengths and image sizes: left padding differs per row
    reference = torch.tensor(whole_text_scores(HFEngine(batch_size=1, model=model, processor=processor),
                                               reqs, candidates))
    assert reference.std() > 1.0  # the scores really vary with prompt and candidate
    for batch_size in (1, 2, 5):  # prompts per pass
        cached = torch.tensor(HFEngine(batch_size=batch_size, model=model, processor=processor).score(reqs,
                                                                                                      candidates))
        assert torch.allclose(cached, reference, atol=1e-4, rtol=0), (batch_size, cached - reference)


def test_one_prompt_pass_per_batch_whatever_the_number_of_candidates(qwen):
    model, processor = qwen
    passes = []
    handle = model.model.visual.register_forward_hook(lambda *_: passes.append(1))
    try:
        HFEngine(batch_size=5, model=model, processor=processor).score(requests(), CANDIDATES[1])
    finally:
        handle.remove()
    assert len(passes) == 1  # the images went through the vision encoder once, not once per candidate


def same_length_requests() -> list:
    """Prompts of one length (same text, same image size, different images): no padding, so the batch's
    shared start (system prompt, text before the image) runs once for the batch."""
    from PIL import Image

    from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat

    system = "You are an early-fire detection agent. Answer ONLY with a valid JSON matching this schema."
    colours = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (240, 240, 240)]
    return [ChatRequest(chat(system, ImagePart(Image.new("RGB", (160, 120), c)), TextPart(f"Is there smoke? {i}")))
            for i, c in enumerate(colours)]


@pytest.mark.parametrize("family", ["qwen", "llava"])
def test_a_batch_sharing_its_prompt_start_scores_as_whole_texts(family, request):
    from vlmexp.engines.prefix import shared_prefix_length

    model, processor = request.getfixturevalue(family)
    reqs, candidates = same_length_requests(), CANDIDATES[1]
    engine = HFEngine(batch_size=4, model=model, processor=processor)
    assert shared_prefix_length(model, engine._encode_requests(reqs)) >= 16
    reference = torch.tensor(whole_text_scores(HFEngine(batch_size=1, model=model, processor=processor),
                                               reqs, candidates))
    assert reference.std() > 1.0
    cached = torch.tensor(engine.score(reqs, candidates))
    assert torch.allclose(cached, reference, atol=1e-4, rtol=0), cached - reference
