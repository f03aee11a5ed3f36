"""``engine=none``: no vision-language model, for runs whose plugins do all the model work (``task=annotate
captioner=blip``). Asking it to answer is a one-line error."""

from __future__ import annotations

from collections.abc import Sequence

from vlmexp.engines.base import Engine
from vlmexp.errors import EngineError
from vlmexp.messages import ChatRequest, Generation


class NoEngine(Engine):
    serves_model = False

    def __init__(self, **_unused):
        pass

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        raise EngineError("engine=none runs no model, but this run asks one to answer: choose engine=hf, "
                          "ollama or openai (with task=annotate, captioner=engine needs one)")
