"""VQA test material: a generated set of simple coloured images written as real JSONL files with PNG
images, and an MLflow tracker that raises KeyboardInterrupt at a chosen metric (Ctrl-C mid-run).

Each generated image is a big filled shape of one colour on a light or dark background, with two
questions: the colour of the shape and whether the background is light or dark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmexp.tracking.mlflow_tracker import MlflowTracker

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 40), "blue": (30, 60, 230), "yellow": (235, 220, 30)}
COLOUR_QUESTION = "What colour is the shape?"
BACKGROUND_QUESTION = "Is the background light or dark?"


def draw(rng: np.random.Generator, colour: str, light: bool, size: int = 56) -> np.ndarray:
    background = rng.uniform(200, 245) if light else rng.uniform(10, 55)
    img = np.full((size, size, 3), background) + rng.normal(0, 4, (size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    radius = rng.uniform(0.28, 0.36) * size
    if rng.random() < 0.5:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    else:
        mask = (abs(yy - cy) <= radius * 0.9) & (abs(xx - cx) <= radius * 0.9)
    img[mask] = np.asarray(COLOURS[colour]) + rng.normal(0, 8, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_split(folder: Path, name: str, images: int, seed: int, size: int = 56) -> Path:
    """``folder/name.jsonl`` with image paths relative to it (``folder/name/img*.png``); colours and
    backgrounds cycle so that every answer is equally frequent."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(images):
        colour, light = list(COLOURS)[i % len(COLOURS)], bool((i // len(COLOURS)) % 2)
        relative = f"{name}/img{i:03d}.png"
        Image.fromarray(draw(rng, colour, light, size)).save(folder / relative)
        lines.append({"image_path": relative, "question": COLOUR_QUESTION, "answer": colour})
        lines.append({"image_path": relative, "question": BACKGROUND_QUESTION,
                      "answer": "light" if light else "dark"})
    path = folder / f"{name}.jsonl"
    write_jsonl(path, lines)
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


class InterruptingTracker(MlflowTracker):
    """The MLflow tracker, but Ctrl-C is 'pressed' when ``metric`` is logged at ``step``."""

    def __init__(self, metric: str, step: int, **settings):
        super().__init__(**settings)
        self.metric, self.step = metric, step

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        if self.metric in metrics and step == self.step:
            raise KeyboardInterrupt
