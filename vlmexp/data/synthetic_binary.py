"""A generated two-class image set: clear blue sky (label 0) against sky filled with heavy grey smoke
(label 1), written as JSONL files in the layout the binary task reads. Deterministic for a given seed.

The classes differ over most of the frame, so even a frozen backbone with random weights separates
them; faint differences (a small plume) would not be.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmexp.paths import build_once, expand

GENERATOR_VERSION = 1
PROMPTS = ["Is the sky full of smoke?", "Is there heavy smoke in this image?", "Is this scene clear or smoky?"]


def _scene(rng: np.random.Generator, width: int, height: int, smoky: bool) -> np.ndarray:
    yy = np.linspace(0.0, 1.0, height)[:, None, None]
    top = rng.uniform([40, 100, 200], [90, 150, 250])
    bottom = rng.uniform([120, 170, 230], [170, 210, 255])
    img = np.broadcast_to(top * (1 - yy) + bottom * yy, (height, width, 3)).copy()
    horizon = int(height * rng.uniform(0.7, 0.85))
    img[horizon:] = rng.uniform([40, 80, 30], [90, 130, 60])
    if smoky:
        grey = rng.uniform(120, 200)
        haze = np.clip(rng.normal(0.9, 0.05, (height, width, 1)), 0.75, 1.0)
        img = img * (1 - haze) + grey * haze
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def write_binary_split(folder: Path, name: str, rng: np.random.Generator, count: int, width: int,
                       height: int) -> Path:
    """``count`` images (alternating labels, then shuffled) under ``folder/name/`` and ``folder/name.jsonl``."""
    from PIL import Image

    (folder / name).mkdir(parents=True, exist_ok=True)
    labels = rng.permutation([i % 2 for i in range(count)])
    lines = []
    for i, label in enumerate(labels):
        image = f"{name}/{i:04d}.png"
        Image.fromarray(_scene(rng, width, height, bool(label))).save(folder / image)
        lines.append({"image_path": image, "text": PROMPTS[int(rng.integers(len(PROMPTS)))], "label": int(label)})
    jsonl = folder / f"{name}.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl


def generate_binary_dataset(cache_dir: str, train: int = 64, val: int = 24, test: int = 40, width: int = 112,
                            height: int = 112, seed: int = 0) -> dict[str, str]:
    """Create (once) train/val/test JSONL files under the cache; return their paths by split."""
    spec = dict(v=GENERATOR_VERSION, train=train, val=val, test=test, w=width, h=height, seed=seed)
    key = "-".join(f"{k}{v}" for k, v in spec.items())

    def build(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, n in (("train", train), ("val", val), ("test", test)):
            write_binary_split(folder, split, rng, n, width, height)
        (folder / "spec.json").write_text(json.dumps(spec))

    target = build_once(expand(cache_dir) / "datasets" / f"synthetic_binary-{key}", build)
    return {split: str(target / f"{split}.jsonl") for split in ("train", "val", "test")}
