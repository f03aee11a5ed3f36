"""Tokenise (request, answer) pairs for supervised fine-tuning, with loss on the answer only.

The mask comes from the processor's own chat template, never from hard-coded token ids: the prompt
is the conversation rendered with ``add_generation_prompt=True``; the full conversation (with the
answer as the assistant turn) must continue that prompt with the answer. The training text is the
prompt, the answer and one end token: the template's own end-of-turn token when the text after the
answer starts with a special token (``<|im_end|>`` for Qwen), else the tokenizer's EOS (templates such
as LLaVA-1.5's end the turn with plain text), so the model learns to stop. Labels are -100 on the
prompt (system and user turns, image tokens) and on padding; the answer and the end token are kept.
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


def end_token_text(tokenizer, suffix: str) -> str:
    """The token that ends the answer: the template's end-of-turn special token, else EOS."""
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if ids and ids[0] in set(tokenizer.all_special_ids):
        return tokenizer.convert_ids_to_tokens(ids[0])
    if tokenizer.eos_token is None:
        raise DataError("the chat template ends the answer without a special token and the tokenizer has no "
                        "EOS token: the model could not learn where an answer stops")
    return tokenizer.eos_token


def supervised_text(processor, request: ChatRequest, answer: str) -> tuple[str, str]:
    """(prompt text, training text = prompt + answer + end token), both rendered by the chat template."""
    tokenizer = getattr(processor, "tokenizer", processor)
    conversation = to_hf_conversation(request)
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        conversation + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}],
        add_generation_prompt=False, tokenize=False)
    rest = full[len(prompt):] if full.startswith(prompt) else ""
    start = rest.find(answer)
    if start < 0 or rest[:start].strip():
        raise DataError("the chat template does not render the answer right after its generation prompt; "
                        "answer-only loss cannot be masked for this processor")
    end = start + len(answer)
    return prompt, prompt + rest[:end] + end_token_text(tokenizer, rest[end:])


def build_features(processor, request: ChatRequest, answer: str) -> dict:
    """Processor outputs for the training text, plus ``labels`` (-100 outside the answer)."""
    import torch

    prompt, text = supervised_text(processor, request, answer)
    full = _processor_inputs(processor, text, request)
    prompt_ids = _processor_inputs(processor, prompt, request)["input_ids"][0]
    ids = full["input_ids"][0]
    n = len(prompt_ids)
    if len(ids) <= n or not torch.equal(ids[:n], prompt_ids):
        raise DataError("the tokenizer merges the answer's first characters into the end of the generation "
                        "prompt; answer-only loss cannot be masked for this processor")
    labels = ids.clone()
    labels[:n] = IGNORE_INDEX
    features = dict(full.items())
    features["labels"] = labels.unsqueeze(0)
    return features


def collate(features: Sequence[dict], pad_token_id: int) -> dict:
    """Right-pad per-token tensors; concatenate the rest (pixel values, grid sizes) along dim 0.
    Examples that could not be built (None) are left out; an all-None batch gives ``{}``."""
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
