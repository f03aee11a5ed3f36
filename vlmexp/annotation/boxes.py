"""How a model writes a box (``model.box_format``), used in grounding answers and description questions.

``QwenBbox2d``: Qwen2.5-VL's grounding JSON, ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` in absolute
pixels of the image as the processor resizes it (``smart_resize`` within ``model.min_pixels`` ..
``model.max_pixels``, sides multiples of 28), which is the pixel grid the model answers in.
``NormalizedBox``: ``[x1, y1, x2, y2]`` as fractions of the width and height (LLaVA-1.5, 2 decimals), or
scaled to 0..1000 integers (``scale: 1000, decimals: 0``, Qwen2-VL)."""

from __future__ import annotations

import json
from collections.abc import Sequence


class QwenBbox2d:
    def __init__(self, min_pixels: int = 200704, max_pixels: int = 1003520, factor: int = 28):
        self.min_pixels, self.max_pixels, self.factor = min_pixels, max_pixels, factor

    def coords(self, box: Sequence[float], size: tuple[int, int]) -> list[int]:
        from qwen_vl_utils import smart_resize

        width, height = size
        new_h, new_w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                                    max_pixels=self.max_pixels)
        sx, sy = new_w / width, new_h / height
        return [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]

    def box(self, box: Sequence[float], size: tuple[int, int]) -> str:
        return json.dumps(self.coords(box, size))

    def answer(self, box: Sequence[float], label: str, size: tuple[int, int]) -> str:
        return json.dumps({"bbox_2d": self.coords(box, size), "label": label})


class NormalizedBox:
    def __init__(self, decimals: int = 2, scale: float = 1.0):
        self.decimals, self.scale = decimals, scale

    def box(self, box: Sequence[float], size: tuple[int, int]) -> str:
        width, height = size
        values = [box[0] / width, box[1] / height, box[2] / width, box[3] / height]
        scaled = [round(v * self.scale, self.decimals) for v in values]
        shown = [int(v) for v in scaled] if self.decimals == 0 else [f"{v:.{self.decimals}f}" for v in scaled]
        return "[" + ", ".join(str(v) for v in shown) + "]"

    def answer(self, box: Sequence[float], label: str, size: tuple[int, int]) -> str:
        return self.box(box, size)
