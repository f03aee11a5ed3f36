"""Tokenise (request, answer) pairs for supervised fine-tuning, with loss on the answer only.

The mask comes from the processor's own chat template: the prompt is the template rendered with
``add_generation_prompt=True``; everything the full conversation adds after it is the answer plus the
template's end-of-turn text. Labels keep the answer and the first end-of-turn token (so the model
learns to stop); the prompt, image tokens, the rest of the end-of-turn text and padding are -100.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlmexp.engines.hf import to_hf_conversation
from vlmexp.errors import DataError
from vlmexp.messages import ChatRequest

IGNORE_INDEX = -100


def _processor_inputs(processor, text: str, request: ChatRequest) -> dict:
    kwargs = dict(text=[text], return_tensors="pt")
    if request.images:
        kwargs["images"] = request.images
    if request.videos:
        kwargs["videos"] = [v.frames for v in request.videos]
        kwargs["do_sample_frames"] = False
    return processor(**kwargs)


def build_features(processor, request: ChatRequest, answer: str) -> dict:
    tokenizer = getattr(processor, "tokenizer", processor)
    conversation = to_hf_conversation(request)
    prompt_text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    full_text = processor.apply_chat_template(
        conversation + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        add_generation_prompt=False, tokenize=False)
    if not full_text.startswith(prompt_text + answer):
        raise DataError("the chat template does not render the answer right after the generation prompt; "
                        "answer-only loss cannot be masked for this processor")
    suffix_ids = tokenizer(full_text[len(prompt_text) + len(answer):], add_special_tokens=False)["input_ids"]
    trailing = max(0, len(suffix_ids) - 1)  # end-of-turn token stays supervised, what follows does not

    full = _processor_inputs(processor, full_text, request)
    prompt_len = _processor_inputs(processor, prompt_text, request)["input_ids"].shape[1]
    ids = full["input_ids"][0]
    labels = ids.clone()
    labels[:prompt_len] = IGNORE_INDEX
    if trailing:
        labels[len(ids) - trailing:] = IGNORE_INDEX
    features = {k: v for k, v in full.items()}
    features["labels"] = labels.unsqueeze(0)
    return features


def collate(features: Sequence[dict], pad_token_id: int) -> dict:
    """Right-pad per-token tensors; concatenate the rest (pixel values, grid sizes) along dim 0."""
    import torch

    features = [f for f in features if f is not None]
    if not features:
        return {}
    length = max(f["input_ids"].shape[1] for f in features)
    batch = {}
    for key in features[0]:
        values = [f[key] for f in features]
        first, tokens = values[0], features[0]["input_ids"]
        if first.dim() == 2 and first.shape[0] == 1 and first.shape[1] == tokens.shape[1]:
            fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
            batch[key] = torch.cat([torch.nn.functional.pad(v, (0, length - v.shape[1]), value=fill)
                                    for v in values])
        else:
            batch[key] = torch.cat(values)
    return batch
