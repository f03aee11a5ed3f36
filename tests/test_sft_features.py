"""Training features from one processor pass equal those of running it on the prompt and on the full
text and masking the prompt's tokens, for Qwen2.5-VL's template and LLaVA's plain-text one."""

from __future__ import annotations

import pytest
import torch

from tests.test_hf_engine import requests
from tests.tiny_llava import build_tiny_llava_checkpoint
from vlmexp.errors import DataError
from vlmexp.models.adapters.transformers import IGNORE_INDEX, TransformersAdapter

ANSWERS = ["1", '{"has_smoke": true, "bbox": [0.51, 0.62, 0.3, 0.25]}', "a red square on white", "Negative"]


def two_pass_features(adapter: TransformersAdapter, processor, request, answer: str) -> dict:
    """The reference: the processor on the prompt and on the whole text, images included in both."""
    prompt, text = adapter.supervised_text(processor, request, answer)
    full = adapter._processor_inputs(processor, [text], [request])
    prompt_ids = adapter._processor_inputs(processor, [prompt], [request])["input_ids"][0]
    ids = full["input_ids"][0]
    assert torch.equal(ids[:len(prompt_ids)], prompt_ids)
    labels = ids.clone()
    labels[:len(prompt_ids)] = IGNORE_INDEX
    return {**full, "labels": labels[None]}


@pytest.fixture(scope="module")
def processors(tiny_checkpoint, tmp_path_factory):
    from transformers import AutoProcessor

    llava = build_tiny_llava_checkpoint(str(tmp_path_factory.mktemp("llava-cache")))
    return {"qwen": AutoProcessor.from_pretrained(tiny_checkpoint), "llava": AutoProcessor.from_pretrained(llava)}


@pytest.mark.parametrize("family", ["qwen", "llava"])
def test_one_pass_features_equal_two_pass_features(processors, family):
    adapter, processor = TransformersAdapter(), processors[family]
    for i, request in enumerate(requests()):
        answer = ANSWERS[i % len(ANSWERS)]
        got = adapter.supervised_features(processor, request, answer)
        expected = two_pass_features(adapter, processor, request, answer)
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (family, i, key)
        assert (got["labels"] != IGNORE_INDEX).sum() >= 2  # the answer and its end token are supervised


def test_one_processor_call_per_example(processors, monkeypatch):
    adapter, processor = TransformersAdapter(), processors["qwen"]
    calls = []
    original = type(processor.image_processor).__call__
    monkeypatch.setattr(type(processor.image_processor), "__call__",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    adapter.supervised_features(processor, requests()[0], "yes")
    assert len(calls) == 1


def test_an_answer_merging_into_the_prompt_is_refused(processors):
    from vlmexp.models.adapters.transformers import answer_token_count

    tokenizer = processors["qwen"].tokenizer
    text = "colour: red"
    cut = next((k for k in range(1, len(text)) if tokenizer(text)["input_ids"][:len(tokenizer(text[:k])["input_ids"])]
                != tokenizer(text[:k])["input_ids"]), None)
    assert cut is not None  # some split of the text lands inside one of its tokens
    with pytest.raises(DataError, match="merges"):
        answer_token_count(tokenizer, text[:cut], text)
    assert answer_token_count(tokenizer, "colour:", "colour:<|im_end|>") == 1
