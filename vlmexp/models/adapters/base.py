"""The model-adapter protocol: what the engine, the trainers and the classifier need of a model family.

An adapter loads a checkpoint, turns typed chat requests (with or without answers) into model
inputs, names the model's parts (vision encoder, projector, language model) for freezing and LoRA,
and reports the image sizes the model actually saw. A family that loads with
``AutoModelForImageTextToText`` and a chat template needs no adapter of its own (the default,
:class:`~vlmexp.models.adapters.transformers.TransformersAdapter`, serves it); one with its own
Hub code is one adapter module plus one model YAML naming it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlmexp.messages import ChatRequest


@dataclass(frozen=True)
class ModelParts:
    """(qualified name, module) of each part; None where the model has no such part."""

    vision: tuple[str, Any] | None
    projector: tuple[str, Any] | None
    language: tuple[str, Any] | None

    @staticmethod
    def module(part: tuple[str, Any] | None):
        return part[1] if part else None

    @staticmethod
    def name(part: tuple[str, Any] | None) -> str | None:
        return part[0] if part else None


class ModelAdapter(ABC):
    """One model family's loading, input encoding and layout."""

    #: Whether :meth:`forward` gives logits aligned with ``encode``'s ``input_ids`` (candidate scoring).
    supports_scoring: bool = True
    #: Whether :meth:`generate` takes a prefilled ``cache`` of the prompts' shared start (transformers'
    #: ``generate`` does; see :mod:`vlmexp.engines.prefix`).
    generates_from_cache: bool = False

    def check_trainable(self, model_cfg) -> None:
        """Raise ConfigError, in one line, when supervised fine-tuning cannot drive this model."""

    @abstractmethod
    def load_processor(self, checkpoint: str, model_cfg) -> Any:
        """The processor (or tokenizer) for ``checkpoint``, with the config's pixel budget applied."""

    @abstractmethod
    def load_model(self, checkpoint: str, model_cfg, placement, *, for_training: bool = False) -> Any:
        """The model on ``placement`` (device, dtype, attention kernel, quantisation)."""

    @abstractmethod
    def encode(self, processor, requests: Sequence[ChatRequest], *, padding_side: str = "left",
               texts: Sequence[str] | None = None) -> Any:
        """Model inputs for a batch of requests, each ending with the generation prompt. ``texts``: the
        prompts as rendered by :meth:`prompt_text` and extended by the caller (scoring appends each
        candidate answer), used instead of rendering them again."""

    @abstractmethod
    def prompt_text(self, processor, request: ChatRequest) -> str:
        """The request rendered as the model's prompt text, ending with the generation prompt."""

    @abstractmethod
    def supervised_features(self, processor, request: ChatRequest, answer: str) -> dict:
        """Model inputs for one (request, answer) pair with ``labels``: -100 everywhere but the
        answer and the token that ends it."""

    @abstractmethod
    def collate(self, features: Sequence[dict | None], pad_token_id: int) -> dict:
        """One training batch from :meth:`supervised_features` outputs; None items (unreadable images)
        are left out, and an all-None batch gives ``{}``."""

    @abstractmethod
    def parts(self, model) -> ModelParts:
        """The model's vision encoder, projector and language model."""

    def image_sizes(self, processor, inputs, requests: Sequence[ChatRequest]) -> list[list[tuple[int, int]]]:
        """Per request, the (width, height) of each image as the model saw it (default: as sent)."""
        return [[tuple(image.size) for image in request.images] for request in requests]

    def enable_gradient_checkpointing(self, model) -> None:
        """``train.gradient_checkpointing=true``: recompute activations in the backward pass."""
        # the transformers 5 name; older 5.x releases only have the gradient_checkpointing_ one
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})

    def forward(self, model, batch):
        """The model's output (``.loss`` with labels, ``.logits``) for an :meth:`encode` or
        :meth:`collate` batch."""
        return model(**batch)

    def generate(self, model, inputs, **generation_kwargs):
        """Token ids of prompt + answer for a batch of :meth:`encode` outputs."""
        return model.generate(**inputs, **generation_kwargs)
