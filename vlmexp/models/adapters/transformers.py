"""The default adapter: models that load with ``AutoModelForImageTextToText`` + ``AutoProcessor`` and
render requests with the processor's chat template (Qwen2.5-VL, Qwen2-VL, LLaVA-1.5, ...).

Answer-only labels come from the chat template itself, never from hard-coded token ids: the prompt is
the conversation rendered with ``add_generation_prompt=True``, and the full conversation (with the
answer as the assistant turn) must continue that prompt with the answer. The training text is the
prompt, the answer and one end token: the template's own end-of-turn token when the text after the
answer starts with a special token (``<|im_end|>`` for Qwen), else the tokenizer's EOS (templates such
as LLaVA-1.5's end the turn with plain text), so the model learns to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmexp.distributed import local_rank, world_size
from vlmexp.errors import DataError, EngineError
from vlmexp.messages import ChatRequest, ImagePart, TextPart, VideoPart
from vlmexp.models.adapters.base import ModelAdapter, ModelParts

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


def to_chat_template(request: ChatRequest) -> list[dict]:
    """Typed messages -> the content-list format of transformers chat templates."""
    conversation = []
    for message in request.messages:
        content: list[dict[str, Any]] = []
        for part in message.content:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
            elif isinstance(part, VideoPart):
                content.append({"type": "video"})
        conversation.append({"role": message.role, "content": content})
    return conversation


def from_pretrained(auto_cls, checkpoint: str, model_cfg, **kwargs):
    """``auto_cls.from_pretrained`` whose loading errors become one EngineError line naming the source."""
    try:
        return auto_cls.from_pretrained(checkpoint, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        where = "folder" if Path(checkpoint).exists() else "Hub id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineError(f"model={model_cfg.name}: cannot load {auto_cls.__name__} from {where} "
                          f"'{checkpoint}': {first}") from exc


def end_token_text(tokenizer, suffix: str) -> str:
    """The token that ends the answer: the template's end-of-turn special token, else EOS."""
    ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    if ids and ids[0] in set(tokenizer.all_special_ids):
        return tokenizer.convert_ids_to_tokens(ids[0])
    if tokenizer.eos_token is None:
        raise DataError("the chat template ends the answer without a special token and the tokenizer has no "
                        "EOS token: the model could not learn where an answer stops")
    return tokenizer.eos_token


def answer_token_count(tokenizer, prompt: str, text: str) -> int:
    """How many of ``text``'s last tokens come after ``prompt``'s, from the text alone: the processor
    only expands image placeholders inside the prompt, so the answer's tokens are the same with images.
    DataError when the prompt's tokens are not a prefix of the text's (the tokenizer merges them)."""
    prompt_ids, ids = tokenizer([prompt, text])["input_ids"]
    if len(ids) <= len(prompt_ids) or ids[:len(prompt_ids)] != prompt_ids:
        raise DataError("the tokenizer merges the answer's first characters into the end of the generation "
                        "prompt; answer-only loss cannot be masked for this processor")
    return len(ids) - len(prompt_ids)


def pad_and_stack(features: Sequence[dict | None], pad_token_id: int) -> dict:
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


class TransformersAdapter(ModelAdapter):
    """``vision`` / ``projector`` / ``language``: the attribute names transformers' VLM classes give
    those parts; the first submodule whose own name is in the list is the part."""

    generates_from_cache = True

    def __init__(self, vision: Sequence[str] = ("visual", "vision_tower", "vision_model", "vision_encoder"),
                 projector: Sequence[str] = ("multi_modal_projector", "mm_projector", "merger"),
                 language: Sequence[str] = ("language_model", "text_model")):
        self.part_names = {"vision": tuple(vision), "projector": tuple(projector), "language": tuple(language)}

    # -- loading ----------------------------------------------------------------------------------
    def load_processor(self, checkpoint: str, model_cfg):
        from transformers import AutoProcessor

        kwargs = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.get("revision"))
        processor = from_pretrained(AutoProcessor, checkpoint, model_cfg, **kwargs)
        # Dynamic-resolution processors (Qwen2-VL family) take a pixel budget; fixed-size ones do not.
        if hasattr(getattr(processor, "image_processor", None), "merge_size"):
            budget = {"shortest_edge": model_cfg.min_pixels, "longest_edge": model_cfg.max_pixels}
            processor = from_pretrained(AutoProcessor, checkpoint, model_cfg, size=budget, **kwargs)
        tokenizer = getattr(processor, "tokenizer", processor)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return processor

    def load_model(self, checkpoint: str, model_cfg, placement, *, for_training: bool = False):
        from transformers import AutoModelForImageTextToText

        from vlmexp.models.patch_projection import project_patches_by_matmul

        kwargs = dict(dtype=placement.torch_dtype(), attn_implementation=placement.attn_implementation,
                      trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.get("revision"))
        if placement.quantization:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=placement.quantization == 4, load_in_8bit=placement.quantization == 8,
                bnb_4bit_compute_dtype=placement.torch_dtype(), bnb_4bit_quant_type="nf4")
            kwargs["device_map"] = {"": 0}
        elif placement.device == "cuda" and not for_training:
            # one process: spread large models over the visible GPUs; several: each on its own GPU
            kwargs["device_map"] = {"": local_rank()} if world_size() > 1 else "auto"
        model = from_pretrained(AutoModelForImageTextToText, checkpoint, model_cfg, **kwargs)
        project_patches_by_matmul(model)
        if "device_map" not in kwargs and not for_training:
            model.to(placement.device)
        model.eval()
        return model

    # -- inputs -----------------------------------------------------------------------------------
    def prompt_text(self, processor, request: ChatRequest) -> str:
        return processor.apply_chat_template(to_chat_template(request), add_generation_prompt=True, tokenize=False)

    def _processor_inputs(self, processor, texts: list[str], requests: Sequence[ChatRequest], **kwargs):
        kwargs = dict(text=texts, return_tensors="pt", **kwargs)
        images = [img for r in requests for img in r.images]
        videos = [v for r in requests for v in r.videos]
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = [v.frames for v in videos]
            # The frames are already sampled; their rate sets the model's temporal positions.
            kwargs["video_metadata"] = [{"total_num_frames": len(v.frames), "fps": float(v.fps)} for v in videos]
            kwargs["do_sample_frames"] = False
        return processor(**kwargs)

    def encode(self, processor, requests: Sequence[ChatRequest], *, padding_side: str = "left",
               texts: Sequence[str] | None = None):
        texts = list(texts) if texts is not None else [self.prompt_text(processor, r) for r in requests]
        return self._processor_inputs(processor, texts, requests, padding=True, padding_side=padding_side)

    def supervised_text(self, processor, request: ChatRequest, answer: str) -> tuple[str, str]:
        """(prompt text, training text = prompt + answer + end token), both rendered by the chat template."""
        tokenizer = getattr(processor, "tokenizer", processor)
        conversation = to_chat_template(request)
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

    def supervised_features(self, processor, request: ChatRequest, answer: str) -> dict:
        prompt, text = self.supervised_text(processor, request, answer)
        full = self._processor_inputs(processor, [text], [request])  # the one pass with images
        ids = full["input_ids"][0]
        n = len(ids) - answer_token_count(getattr(processor, "tokenizer", processor), prompt, text)
        labels = ids.clone()
        labels[:n] = IGNORE_INDEX
        features = dict(full.items())
        features["labels"] = labels.unsqueeze(0)
        return features

    def collate(self, features: Sequence[dict | None], pad_token_id: int) -> dict:
        return pad_and_stack(features, pad_token_id)

    # -- layout -----------------------------------------------------------------------------------
    def _find(self, model, kind: str) -> tuple[str, Any] | None:
        names = self.part_names[kind]
        for qualified, module in model.named_modules():
            if qualified.rsplit(".", 1)[-1] in names:
                return qualified, module
        return None

    def parts(self, model) -> ModelParts:
        return ModelParts(self._find(model, "vision"), self._find(model, "projector"), self._find(model, "language"))

    def image_sizes(self, processor, inputs, requests: Sequence[ChatRequest]) -> list[list[tuple[int, int]]]:
        """Dynamic-resolution processors report each image's patch grid; its size is grid x patch."""
        grids = inputs.get("image_grid_thw")
        patch = getattr(getattr(processor, "image_processor", None), "patch_size", None)
        if grids is None or not patch:
            return super().image_sizes(processor, inputs, requests)
        sizes, k = [], 0
        for request in requests:
            own = []
            for _ in request.images:
                _, h, w = (int(x) for x in grids[k])
                own.append((w * patch, h * patch))
                k += 1
            sizes.append(own)
        return sizes
