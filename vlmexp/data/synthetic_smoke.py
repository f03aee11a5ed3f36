"""A generated smoke dataset: landscapes, some with a grey plume rising from the horizon.

Written in the ``sequences`` layout with FIgLib-style names and YOLO labels, so it goes through the
same loader as real data. Deterministic for a given seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmexp.paths import build_once, expand

GENERATOR_VERSION = 4


def _landscape(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    yy = np.linspace(0.0, 1.0, height)[:, None, None]
    top = rng.uniform([90, 140, 200], [140, 190, 245])
    bottom = rng.uniform([170, 200, 230], [215, 230, 250])
    sky = top * (1 - yy) + bottom * yy
    img = np.broadcast_to(sky, (height, width, 3)).copy()
    horizon = int(height * rng.uniform(0.55, 0.7))
    xs = np.arange(width)
    ridge = horizon + (height * 0.06 * np.sin(xs / width * rng.uniform(3, 7) + rng.uniform(0, 6))).astype(int)
    ground = rng.uniform([40, 70, 30], [90, 120, 60])
    for x in xs:
        img[ridge[x]:, x] = ground * rng.uniform(0.9, 1.1)
    return img


def _plume(img: np.ndarray, rng: np.random.Generator, cx: float, base: float, size: float):
    """Paint a heavy, billowing grey plume rising from (cx, base); return its YOLO box, normalised."""
    h, w, _ = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    height = size * base * h
    for k in range(9):  # overlapping puffs, wider and drifting as they rise
        t = k / 8
        py = base * h - t * height
        px = cx * w + t * size * 0.3 * w
        radius = (0.08 + 0.22 * t) * size * w + 4
        mask |= (yy - py) ** 2 + (xx - px) ** 2 <= radius ** 2
    mask &= yy <= base * h
    grey = rng.uniform(185, 225)
    img[mask] = img[mask] * 0.1 + grey * 0.9
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min() / w, (xs.max() + 1) / w, ys.min() / h, (ys.max() + 1) / h
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


def write_split(root: Path, rng: np.random.Generator, sequences: int, frames: int, width: int, height: int,
                smoke_share: float, step_s: int = 60) -> None:
    from PIL import Image

    for s in range(sequences):
        seq_dir = root / f"seq{s:03d}"
        seq_dir.mkdir(parents=True)
        has_fire = rng.random() < smoke_share
        # Ignition in the first half: with smoke_share 0.8 about half of all frames show smoke.
        ignition = int(rng.integers(1, frames // 2 + 1)) if has_fire else frames
        base_img = _landscape(rng, width, height)
        cx, base = rng.uniform(0.2, 0.8), rng.uniform(0.55, 0.68)
        stamp = 1465000000 + s * 10000
        for f in range(frames):
            img = base_img + rng.normal(0, 3, base_img.shape)
            offset = (f - ignition) * step_s
            stem = f"{stamp}_{offset:+06d}"
            if f >= ignition:
                size = min(1.0, 0.6 + 0.1 * (f - ignition))
                box = _plume(img, rng, cx, base, size)
                (seq_dir / f"{stem}.txt").write_text("0 " + " ".join(f"{v:.4f}" for v in box) + "\n")
            elif f % 2:  # half of the negatives get an empty label file, the rest none at all
                (seq_dir / f"{stem}.txt").write_text("")
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(seq_dir / f"{stem}.jpg", quality=92)


def generate_smoke_dataset(cache_dir: str, train_sequences: int = 32, test_sequences: int = 10,
                           val_sequences: int = 6, frames_per_sequence: int = 8, width: int = 160,
                           height: int = 120, smoke_share: float = 0.8, seed: int = 0) -> dict[str, str]:
    """Create (once) train/val/test splits under the cache; return their folders."""
    spec = dict(v=GENERATOR_VERSION, train=train_sequences, val=val_sequences, test=test_sequences,
                frames=frames_per_sequence, w=width, h=height, share=smoke_share, seed=seed)
    key = "-".join(f"{k}{v}" for k, v in spec.items())

    def build(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        for split, n in (("train", train_sequences), ("val", val_sequences), ("test", test_sequences)):
            write_split(folder / split, rng, n, frames_per_sequence, width, height, smoke_share)
        (folder / "spec.json").write_text(json.dumps(spec))

    target = build_once(expand(cache_dir) / "datasets" / f"synthetic_smoke-{key}", build)
    return {split: str(target / split) for split in ("train", "val", "test")}
