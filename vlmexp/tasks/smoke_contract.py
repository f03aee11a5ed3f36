"""The smoke output contract: ``{"has_smoke": bool, "bbox": [cx, cy, w, h]}``, normalised 0..1.

Also accepted: Qwen2.5-VL's grounding form, an object or a list of objects with
``bbox_2d: [x1, y1, x2, y2]`` in pixels of the image the model was given. An optional
``"confidence"`` number in 0..1 is kept as the detection score (for average precision).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "has_smoke": {"type": "boolean"},
        "bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["has_smoke", "bbox"],
}

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class SmokeAnswer:
    parse_ok: bool
    has_smoke: bool = False
    boxes: list[list[float]] = field(default_factory=list)  # normalised [cx, cy, w, h]
    confidence: float | None = None  # the answer's own "confidence", when it gives a valid one


def _candidates(text: str):
    """JSON values found in the text: the whole text, fenced blocks, then embedded objects."""
    yield text.strip()
    for block in _FENCE.findall(text):
        yield block.strip()
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text[match.start():])
        except json.JSONDecodeError:
            continue
        yield value


def _numbers(value, n: int = 4) -> list[float] | None:
    if (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return [float(v) for v in value]
    return None


def _confidence(obj: dict) -> float | None:
    value = obj.get("confidence")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return None


def _from_object(obj: dict, image_size: tuple[int, int] | None) -> SmokeAnswer | None:
    has = obj.get("has_smoke")
    if has is not None and not isinstance(has, bool):
        return None
    if "bbox" in obj:
        box = _numbers(obj["bbox"])
        if box is None or has is None:
            return None
        return SmokeAnswer(True, has, [box] if has else [], _confidence(obj))
    if "bbox_2d" in obj:
        corners = _numbers(obj["bbox_2d"])
        if corners is None or not image_size:
            return None
        w, h = image_size
        x1, y1, x2, y2 = corners
        box = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, abs(x2 - x1) / w, abs(y2 - y1) / h]
        smoke = True if has is None else has
        return SmokeAnswer(True, smoke, [box] if smoke else [], _confidence(obj))
    return None


def parse_smoke_answer(text: str, image_size: tuple[int, int] | None = None) -> SmokeAnswer:
    """Parse a model answer; anything that does not fit the contract is ``parse_ok=False`` (BAD_JSON)."""
    for candidate in _candidates(text):
        value = candidate
        if isinstance(candidate, str):
            try:
                value = json.loads(candidate)
            except json.JSONDecodeError:
                continue
        if isinstance(value, dict):
            answer = _from_object(value, image_size)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            parts = [_from_object(v, image_size) for v in value]
            if any(p is None for p in parts):
                continue
            scores = [p.confidence for p in parts if p.confidence is not None]
            answer = SmokeAnswer(True, any(p.has_smoke for p in parts), [b for p in parts for b in p.boxes],
                                 max(scores) if scores else None)
        else:
            continue
        if answer is not None:
            return answer
    return SmokeAnswer(False)


def format_smoke_answer(boxes: list[list[float]]) -> str:
    """The target answer for fine-tuning, in the contract's exact form."""
    if not boxes:
        return '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'
    box = ", ".join(f"{round(v, 2):g}" for v in boxes[0])
    return '{"has_smoke": true, "bbox": [' + box + "]}"
