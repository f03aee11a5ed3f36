"""Generated images of coloured shapes with YOLO labels, whose objects are known exactly: each shape
fills the middle of one cell of a 3 x 3 grid, so its box, its class and its coarse location are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["red square", "blue circle", "green triangle"]
COLOURS = {"red square": (220, 30, 30), "blue circle": (30, 60, 220), "green triangle": (30, 170, 40)}
SIZE, CELL, MARGIN = 96, 32, 6


def cell_box(row: int, col: int) -> list[float]:
    return [float(col * CELL + MARGIN), float(row * CELL + MARGIN),
            float((col + 1) * CELL - MARGIN), float((row + 1) * CELL - MARGIN)]


def draw_image(objects: list[tuple[str, list[float]]]) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), (235, 235, 225))
    pen = ImageDraw.Draw(img)
    for label, (x1, y1, x2, y2) in objects:
        colour = COLOURS[label]
        if label == "red square":
            pen.rectangle([x1, y1, x2, y2], fill=colour)
        elif label == "blue circle":
            pen.ellipse([x1, y1, x2, y2], fill=colour)
        else:
            pen.polygon([((x1 + x2) / 2, y1), (x1, y2), (x2, y2)], fill=colour)
    return img


def yolo_line(label: str, box: list[float]) -> str:
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2 / SIZE, (y1 + y2) / 2 / SIZE, (x2 - x1) / SIZE, (y2 - y1) / SIZE
    return f"{CLASSES.index(label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def write_shapes_set(root: Path, images: int, seed: int = 0) -> dict[str, list[tuple[str, list[float]]]]:
    """``root/images/img_NN.png`` + ``root/labels/img_NN.txt`` + ``root/data.yaml``; 0 to 3 objects per
    image in distinct cells. Returns image (relative to root) -> its objects."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    (root / "data.yaml").write_text("names: [" + ", ".join(CLASSES) + "]\n")
    truth = {}
    for i in range(images):
        cells = rng.permutation(9)[: int(rng.integers(0, 4))]
        objects = [(CLASSES[int(rng.integers(0, 3))], cell_box(int(c) // 3, int(c) % 3)) for c in cells]
        name = f"images/img_{i:02d}.png"
        draw_image(objects).save(root / name)
        (root / "labels" / f"img_{i:02d}.txt").write_text("".join(yolo_line(lb, b) + "\n" for lb, b in objects))
        truth[name] = objects
    return truth
