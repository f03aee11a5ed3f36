"""Small smoke datasets written by the tests, in both layouts, with the scripted answers for each frame.

``write_early_fire_set`` builds the sequences set whose metrics are worked out by hand in
``test_smoke_task.py``; every frame is a distinct solid colour so the scripted engine can tell them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import image_key
from vlmexp.data.images import open_image

NO = '{"has_smoke": false, "bbox": [0, 0, 0, 0]}'
BOX = [0.5, 0.5, 0.4, 0.4]  # pixels 30..70 on a 100 x 100 frame

# (sequence, file name, size, YOLO label text or None for no file, scripted answer)
# Frames with a label "0 ..." are smoke; "1 ..." is fire, not smoke with smoke_classes=[0].
EARLY_FIRE_FRAMES = [
    # fireA: FIgLib offsets; as text "+00000" < "+00060" < "+00120" < "-00060" < "-00120", by time the reverse
    ("fireA", "1000_+00120.png", (100, 100), "0 0.5 0.5 0.4 0.4", '{"bbox_2d": [30, 30, 70, 70], "label": "smoke"}'),
    ("fireA", "1000_-00060.png", (100, 100), None, "```json\n" + NO + "\n```"),
    ("fireA", "1000_+00060.png", (100, 100), "0 0.5 0.5 0.4 0.4",
     'I see smoke: {"has_smoke": true, "bbox": [0.6, 0.5, 0.4, 0.4], "confidence": 0.9} above the ridge.'),
    ("fireA", "1000_-00120.png", (100, 100), "", NO),
    ("fireA", "1000_+00000.png", (100, 100), "0 0.5 0.5 0.4 0.4", NO),
    # fireB: a false alarm before the smoke, a list of grounding boxes, then two BAD_JSON answers
    ("fireB", "2000_-00060.png", (100, 100), None,
     '{"has_smoke": true, "bbox": [0.2, 0.2, 0.1, 0.1], "confidence": 0.8}'),
    ("fireB", "2000_+00000.png", (100, 100), "0 0.25 0.25 0.5 0.5",
     '[{"bbox_2d": [0, 0, 50, 50]}, {"bbox_2d": [60, 60, 100, 100]}]'),
    ("fireB", "2000_+00060.png", (100, 100), "0 0.5 0.5 0.4 0.4", "BAD_JSON"),
    ("fireB", "2000_+00120.png", (100, 100), "0 0.5 0.5 0.4 0.4", '{"has_smoke": "yes", "bbox": [0.5, 0.5, 0.2, 0.2]}'),
    # fireC: no offsets (natural order frame1, frame2, frame10); frame2 is corrupt and is skipped
    ("fireC", "frame1.png", (100, 100), None, '{"has_smoke": false}'),
    ("fireC", "frame2.png", None, "0 0.5 0.5 0.2 0.2", None),
    ("fireC", "frame10.png", (100, 100), "0 0.5 0.5 0.2 0.2", '{"has_smoke": true, "bbox": [0.55, 0.55, 0.2, 0.2]}'),
    # clear: no smoke anywhere, at 720p and 1080p; c.jpg's only box is class 1 (fire)
    ("clear", "a.png", (1280, 720), None, NO),
    ("clear", "b.png", (1280, 720), "", '{"has_smoke": false, "bbox_2d": [0, 0, 0, 0]}'),
    ("clear", "c.jpg", (1920, 1080), "1 0.5 0.5 0.2 0.2", '{"has_smoke": false, "bbox": [0, 0, 0]}'),
    # missed: smoke in every frame, never found
    ("missed", "3000_+00000.png", (100, 100), "0 0.5 0.5 0.4 0.4", "There might be some smoke."),
    ("missed", "3000_+00060.png", (100, 100), "0 0.5 0.5 0.4 0.4", NO),
    # alarm: a clear sequence at 480p with one smoke answer
    ("alarm", "f1.png", (854, 480), None, '{"has_smoke": true, "bbox": [0.5, 0.5, 0.2, 0.2], "confidence": 0.3}'),
    ("alarm", "f2.png", (854, 480), None, NO),
]


def solid_image(path: Path, size: tuple[int, int], index: int) -> None:
    colour = ((37 * index) % 256, (90 + 53 * index) % 256, (200 + 71 * index) % 256)
    Image.new("RGB", size, colour).save(path)


def write_early_fire_set(root: Path) -> dict[str, str]:
    """Write the sequences set; return the scripted answers keyed by image content."""
    answers = {}
    for index, (sequence, name, size, label, answer) in enumerate(EARLY_FIRE_FRAMES):
        folder = root / sequence
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        if size is None:
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            solid_image(path, size, index)
            answers[image_key(open_image(path))] = answer
        if label is not None:
            path.with_suffix(".txt").write_text(label + "\n" if label else "")
    return answers


def noise_image(path: Path, size: tuple[int, int], seed: int, box: list[float] | None = None) -> None:
    """A textured frame (so shake and blur change its pixels), with a bright block where ``box`` is."""
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 120, (h, w, 3), dtype=np.uint8)
    if box:
        cx, cy, bw, bh = box
        pixels[int((cy - bh / 2) * h):int((cy + bh / 2) * h), int((cx - bw / 2) * w):int((cx + bw / 2) * w)] = 230
    Image.fromarray(pixels).save(path)


def write_yolo_set(root: Path, frames: list[tuple[str, list[float] | None]], size=(100, 100)) -> list[Path]:
    """D-Fire layout: ``images/NAME.png`` and ``labels/NAME.txt`` (a smoke box, or an empty file)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    paths = []
    for seed, (name, box) in enumerate(frames):
        path = root / "images" / f"{name}.png"
        noise_image(path, size, seed, box)
        (root / "labels" / f"{name}.txt").write_text(f"0 {' '.join(map(str, box))}\n" if box else "")
        paths.append(path)
    return paths


def write_answers(path: Path, answers: dict[str, str]) -> str:
    path.write_text(json.dumps(answers))
    return str(path)
