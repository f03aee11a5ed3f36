"""Moondream2 (``vikhyatk/moondream2``): remote code loaded with ``AutoModelForCausalLM``.

This adapter drives the interface of the revisions up to ``2024-08-26``: ``Moondream(PreTrainedModel)``
with ``vision_encoder`` (``encoder`` + ``projection``, taking PIL images), ``region_model`` and
``text_model`` (a Phi causal LM). It builds what the official fine-tuning notebook builds:

    inputs_embeds = [BOS] + vision_encoder(image)
                    + tokens("\\n\\nQuestion: {q}\\n\\nAnswer:") + tokens(" {a}<|endoftext|>")

with labels -100 everywhere but the answer tokens, and generates from the same prompt without the
answer (``answer_question``'s ``<image>\\n\\nQuestion: {q}\\n\\nAnswer:``). Later revisions (the
``HfMoondream`` wrapper around ``MoondreamModel``, from ``2025-01-09``) are refused before their
weights load, with one line naming the revision to pin. A system prompt has no place in
Moondream's prompt and is left out.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

from vlmexp.distributed import device_for
from vlmexp.errors import ConfigError, EngineError
from vlmexp.messages import ChatRequest
from vlmexp.models.adapters.base import ModelAdapter, ModelParts
from vlmexp.models.adapters.transformers import IGNORE_INDEX, from_pretrained, pad_and_stack

IMAGE = "<image>"
PROMPT = IMAGE + "\n\nQuestion: {question}\n\nAnswer:"
TRAINED_REVISION = "2024-08-26"  # the newest revision with the interface this adapter trains


class MoondreamAdapter(ModelAdapter):
    supports_scoring = False  # answers are generated; candidate scoring is not built for Moondream

    # -- loading ----------------------------------------------------------------------------------
    def load_processor(self, checkpoint: str, model_cfg):
        from transformers import AutoTokenizer

        tokenizer = from_pretrained(AutoTokenizer, checkpoint, model_cfg, trust_remote_code=model_cfg.trust_remote_code,
                                    revision=model_cfg.get("revision"))
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise EngineError(f"model={model_cfg.name}: the tokenizer of '{checkpoint}' has no BOS or EOS token; "
                              "Moondream's prompt starts with BOS and its answers end with EOS")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def load_model(self, checkpoint: str, model_cfg, placement, *, for_training: bool = False):
        from transformers import AutoModelForCausalLM

        from vlmexp.models.remote_code import load_remote_model

        if placement.quantization:
            raise ConfigError(f"hardware.quantization={placement.quantization}: not supported for "
                              f"model={model_cfg.name}; use LoRA in bf16 (train.lora.enabled=true)")
        kwargs: dict[str, Any] = dict(dtype=placement.torch_dtype(), trust_remote_code=model_cfg.trust_remote_code,
                                      revision=model_cfg.get("revision"))
        if placement.attn_implementation == "flash_attention_2":
            kwargs["attn_implementation"] = "flash_attention_2"
        model = load_remote_model(AutoModelForCausalLM, checkpoint, model_cfg,
                                  check=lambda skeleton: self.check_interface(skeleton, model_cfg), **kwargs)
        # Moondream has no forward of its own: this one is what model(**batch) runs, so the training
        # loop's wrappers (DDP, peft, accelerate's autocast) sit around it as around any model's.
        model.forward = types.MethodType(supervised_forward, model)
        if not for_training:
            model.to(device_for(placement.device))
        model.eval()
        return model

    @staticmethod
    def check_interface(model, model_cfg) -> None:
        import torch

        parts = ("vision_encoder", "text_model")
        if not all(isinstance(getattr(model, name, None), torch.nn.Module) for name in parts):
            revision = model_cfg.get("revision") or "the default branch"
            raise ConfigError(f"model={model_cfg.name}: {revision} of '{model_cfg.hf_id}' has the "
                              f"{type(model).__name__} interface (no vision_encoder / text_model), which this adapter "
                              f"does not drive; pin model.revision={TRAINED_REVISION}")

    # -- inputs -----------------------------------------------------------------------------------
    def prompt_text(self, processor, request: ChatRequest) -> str:
        if len(request.images) != 1:
            raise EngineError(f"Moondream answers about exactly one image per question, got {len(request.images)}")
        question = next((m.text for m in reversed(request.messages) if m.role == "user"), "").strip()
        return PROMPT.format(question=question)

    @staticmethod
    def _after_image(text: str) -> str:
        return text.split(IMAGE, 1)[1] if IMAGE in text else text

    def encode(self, processor, requests: Sequence[ChatRequest], *, padding_side: str = "left",
               texts: Sequence[str] | None = None):
        """Token ids of the prompt after the image (left-padded), the BOS id, and the images; the
        model turns them into embeddings in :meth:`generate`."""
        import torch
        from transformers import BatchFeature

        texts = list(texts) if texts is not None else [self.prompt_text(processor, r) for r in requests]
        rows = [processor(self._after_image(t), add_special_tokens=False)["input_ids"] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), processor.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, span], mask[i, span] = torch.tensor(row), 1
        return BatchFeature({"input_ids": ids, "attention_mask": mask,
                             "bos_ids": torch.full((len(rows), 1), processor.bos_token_id, dtype=torch.long),
                             "eos_token_id": processor.eos_token_id, "images": [r.images[0] for r in requests]})

    def supervised_features(self, processor, request: ChatRequest, answer: str) -> dict:
        import torch

        question = processor(self._after_image(self.prompt_text(processor, request)),
                             add_special_tokens=False)["input_ids"]
        answer_ids = processor(f" {answer}{processor.eos_token}", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([question + answer_ids])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "labels": torch.tensor([[IGNORE_INDEX] * len(question) + answer_ids]),
                "bos_ids": torch.tensor([[processor.bos_token_id]]), "images": [request.images[0]]}

    def collate(self, features: Sequence[dict | None], pad_token_id: int) -> dict:
        features = [f for f in features if f is not None]
        if not features:
            return {}
        batch = pad_and_stack([{k: v for k, v in f.items() if k != "images"} for f in features], pad_token_id)
        batch["images"] = [image for f in features for image in f["images"]]
        return batch

    def enable_gradient_checkpointing(self, model) -> None:
        try:
            model.text_model.gradient_checkpointing_enable({"use_reentrant": False})
        except ValueError as exc:  # the remote text model does not support it
            raise ConfigError(f"train.gradient_checkpointing=true: {str(exc).splitlines()[0]}") from None

    def generate(self, model, inputs, **generation_kwargs):
        """Prompt ids + the answer's ids, as the engine expects. Decoded here, token by token with
        the whole sequence each step, rather than by ``text_model.generate``: the text model of the
        2024 revisions is Moondream's own Phi class, which under transformers 5 has no ``generate``."""
        import torch

        model = getattr(model, "module", model)  # generation runs outside DDP
        embeds, mask, _ = embed_batch(model, inputs, "left")
        embed = model.text_model.get_input_embeddings()
        eos, pad = inputs["eos_token_id"], generation_kwargs.get("pad_token_id") or inputs["eos_token_id"]
        sample = generation_kwargs.get("do_sample") and (generation_kwargs.get("temperature") or 1.0) > 0
        done = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        tokens = []
        for _ in range(int(generation_kwargs.get("max_new_tokens") or 32)):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model.text_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                      use_cache=False).logits[:, -1, :].float()
            if sample:
                probs = torch.softmax(logits / generation_kwargs["temperature"], dim=-1)
                step = torch.multinomial(probs, 1).squeeze(-1)
            else:
                step = logits.argmax(-1)
            step = torch.where(done, torch.full_like(step, pad), step)
            tokens.append(step)
            done |= step == eos
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, embed(step)[:, None, :].to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        new = torch.stack(tokens, dim=1).to(inputs["input_ids"].device)
        return torch.cat([inputs["input_ids"], new], dim=1)

    # -- layout -----------------------------------------------------------------------------------
    def parts(self, model) -> ModelParts:
        def part(name: str):
            try:
                return name, model.get_submodule(name)
            except AttributeError:
                return None

        vision = part("vision_encoder.encoder") or part("vision_encoder")
        projector = part("vision_encoder.projection") if vision and vision[0] != "vision_encoder" else None
        return ModelParts(vision, projector, part("text_model"))


def embed_batch(model, batch, padding_side: str):
    """[BOS] + image embeddings + the real text tokens of each row, padded on ``padding_side``; the
    attention mask, and the labels (-100 on BOS, image and padding) when the batch has them."""
    import torch

    embed = model.text_model.get_input_embeddings()
    vision = model.vision_encoder(batch["images"]).to(embed.weight.dtype)
    has_labels = batch.get("labels") is not None
    rows, labels = [], []
    for i in range(len(batch["images"])):
        real = batch["attention_mask"][i].bool()
        rows.append(torch.cat([embed(batch["bos_ids"][i]), vision[i], embed(batch["input_ids"][i][real])]))
        if has_labels:
            prefix = torch.full((1 + vision.shape[1],), IGNORE_INDEX, dtype=torch.long, device=vision.device)
            labels.append(torch.cat([prefix, batch["labels"][i][real]]))
    width = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=embeds.device)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long, device=embeds.device)
    for i, row in enumerate(rows):
        span = slice(width - row.shape[0], width) if padding_side == "left" else slice(0, row.shape[0])
        embeds[i, span], mask[i, span] = row, 1
        if has_labels:
            targets[i, span] = labels[i]
    return embeds, mask, (targets if has_labels else None)


def supervised_forward(self, input_ids, attention_mask, bos_ids, images, labels=None, **_unused):
    """The forward pass bound to a loaded Moondream: the text model's output (loss with labels) on
    BOS + image + text embeddings, right-padded."""
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "bos_ids": bos_ids, "images": images,
             "labels": labels}
    embeds, mask, targets = embed_batch(self, batch, "right")
    return self.text_model(inputs_embeds=embeds, attention_mask=mask, labels=targets)
