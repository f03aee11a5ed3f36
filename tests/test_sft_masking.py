"""Answer-only loss mask built from the chat template of the tiny model's real processor."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmexp.errors import DataError
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.models.adapters.transformers import IGNORE_INDEX, TransformersAdapter

build_features = TransformersAdapter().supervised_features
collate = TransformersAdapter().collate

# A template that, like LLaVA-1.5's, ends the assistant turn with plain text instead of a special token.
PLAIN_END_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% else %}{{ content['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


def _request(system: str | None = "You answer questions about images."):
    image = Image.new("RGB", (56, 56), (200, 30, 30))
    return ChatRequest(chat(system, ImagePart(image), TextPart("What colour is the shape?")))


def _supervised(features) -> list[int]:
    return [int(t) for t, label in zip(features["input_ids"][0], features["labels"][0]) if label != IGNORE_INDEX]


def test_unmasked_tokens_are_exactly_the_answer_and_end_of_turn(processor):
    tokenizer = processor.tokenizer
    answer = "The shape is dark red."
    features = build_features(processor, _request(), answer)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _supervised(features) == tokenizer(answer, add_special_tokens=False)["input_ids"] + [end_of_turn]
    ids, labels = features["input_ids"][0], features["labels"][0]
    # the supervised tokens are the last ones: nothing of the template follows the end-of-turn token
    assert int(ids[-1]) == end_of_turn and int(labels[-1]) == end_of_turn
    # the system prompt, the question and all 4 image tokens are masked
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == image_pad).sum()) == 4
    assert all(int(label) == IGNORE_INDEX for t, label in zip(ids, labels) if int(t) == image_pad)
    masked_text = tokenizer.decode([int(t) for t, label in zip(ids, labels) if label == IGNORE_INDEX])
    assert masked_text.startswith("<|im_start|>system\nYou answer questions about images.<|im_end|>")
    assert masked_text.endswith("What colour is the shape?<|im_end|>\n<|im_start|>assistant\n")


def test_default_system_prompt_of_the_template_is_masked_too(processor):
    features = build_features(processor, _request(system=None), "red")
    assert processor.tokenizer.decode(_supervised(features)) == "red<|im_end|>"


def test_template_without_end_of_turn_token_supervises_eos(processor):
    from transformers import AutoProcessor

    plain = AutoProcessor.from_pretrained(processor.tokenizer.name_or_path, chat_template=PLAIN_END_TEMPLATE)
    features = build_features(plain, _request(system=None), "red")
    eos = plain.tokenizer.eos_token_id
    assert _supervised(features)[-1] == eos
    assert plain.tokenizer.decode(_supervised(features)) == " red" + plain.tokenizer.eos_token


def test_template_that_drops_the_answer_is_refused(processor):
    from transformers import AutoProcessor

    broken = AutoProcessor.from_pretrained(processor.tokenizer.name_or_path,
                                           chat_template=PLAIN_END_TEMPLATE.replace("content['text'] + ' '", "'x'"))
    with pytest.raises(DataError, match="does not render the answer right after its generation prompt"):
        build_features(broken, _request(system=None), "red")


def test_collate_pads_labels_with_ignore_and_skips_unreadable(processor):
    short = build_features(processor, _request(system=None), "red")
    long = build_features(processor, _request(), "a much longer answer")
    batch = collate([short, None, long], processor.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape[0] == 2 * 16
    pad = batch["input_ids"].shape[1] - short["input_ids"].shape[1]
    assert pad > 0
    assert batch["labels"][0, -pad:].tolist() == [IGNORE_INDEX] * pad
    assert batch["attention_mask"][0, -pad:].tolist() == [0] * pad
    assert collate([None, None], 0) == {}
