"""Typed chat messages: the one request format every engine understands.

A task builds :class:`ChatRequest` objects; an engine turns them into its own wire format
(transformers chat template, Ollama ``/api/chat``, OpenAI chat completions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    image: Any  # PIL.Image.Image (kept untyped so this module does not import PIL)


@dataclass(frozen=True)
class VideoPart:
    frames: list[Any]  # PIL images, in time order
    fps: float = 1.0


Part = TextPart | ImagePart | VideoPart


@dataclass(frozen=True)
class Message:
    role: Role
    content: list[Part]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def images(self) -> list[Any]:
        return [p.image for p in self.content if isinstance(p, ImagePart)]


@dataclass
class ChatRequest:
    """One model call. ``response_schema`` is the task's JSON output contract, if it has one."""

    messages: list[Message]
    response_schema: dict | None = None
    max_new_tokens: int | None = None

    @property
    def images(self) -> list[Any]:
        return [img for m in self.messages for img in m.images]

    @property
    def videos(self) -> list[VideoPart]:
        return [p for m in self.messages for p in m.content if isinstance(p, VideoPart)]


@dataclass
class Generation:
    """What an engine answered for one request."""

    text: str
    latency_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # (width, height) of each image as the model saw it, after any resizing by the engine.
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    error: str | None = None  # set when the engine gave up on this request (retries exhausted)
    truncated: bool = False  # the answer stopped at the token cap (finish reason "length"), not at its end


def chat(system: str | None, *user_parts: Part) -> list[Message]:
    """Shorthand for the common system + one user turn conversation."""
    messages = [Message("system", [TextPart(system)])] if system else []
    messages.append(Message("user", list(user_parts)))
    return messages
