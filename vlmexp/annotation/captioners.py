"""Captioners (``captioner=`` group): a sentence about each detected object in its context.

``engine`` (default) asks the run's engine (``engine=hf``, ``ollama`` or ``openai``): one request per
object holding the whole image with the object's box drawn on it (a red rectangle, so the model sees the
object and what is around it, and the request stays one image that every engine takes) and the
question ``question`` filled with the class's prompt from ``prompts`` (``default_prompt`` for a class
without one; ``{label}`` is the class name). All objects of a batch of images go to the engine in one
``generate`` call."""

from __future__ import annotations

from collections.abc import Sequence

from vlmexp.detectors.base import Detection
from vlmexp.messages import ChatRequest, Generation, ImagePart, TextPart, chat


def draw_box(image, box: Sequence[float], colour: str = "red"):
    """A copy of ``image`` with ``box`` outlined, the line about 1 % of the shorter side (at least 2 px)."""
    from PIL import ImageDraw

    marked = image.copy()
    width = max(2, round(min(image.size) / 100))
    ImageDraw.Draw(marked).rectangle([float(v) for v in box], outline=colour, width=width)
    return marked


class EngineCaptioner:
    needs_engine = True  # asks the run's engine

    def __init__(self, prompts: dict[str, str] | None = None, default_prompt: str = "a {label}. Describe where it is.",
                 question: str = "The red box marks {prompt}", system_prompt: str | None = None,
                 max_new_tokens: int = 64, box_colour: str = "red"):
        self.prompts = dict(prompts or {})
        self.default_prompt, self.question, self.system_prompt = default_prompt, question, system_prompt
        self.max_new_tokens, self.box_colour = max_new_tokens, box_colour

    def prompt(self, label: str) -> str:
        return self.question.format(prompt=self.prompts.get(label, self.default_prompt).format(label=label),
                                    label=label)

    def request(self, image, detection: Detection) -> ChatRequest:
        marked = draw_box(image, detection.box, self.box_colour)
        return ChatRequest(chat(self.system_prompt, ImagePart(marked), TextPart(self.prompt(detection.label))),
                           max_new_tokens=self.max_new_tokens)

    def caption(self, engine, images: Sequence, detections: Sequence[list[Detection]]) -> list[list[Generation]]:
        """One generation per object of each image, in order."""
        requests = [self.request(img, d) for img, found in zip(images, detections) for d in found]
        answers = iter(engine.generate(requests) if requests else [])
        return [[next(answers) for _ in found] for found in detections]
