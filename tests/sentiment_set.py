"""A golden-labels set of real videos for the sentiment tests: 7 readable videos (4 Positive, 3
Negative, labels spelt every accepted way), one listed but missing and one corrupt."""

from __future__ import annotations

import json
from pathlib import Path

from tests.videos import frame_key, solid_video, write_labels

# name, RGB colour (all frames), label as written in the CSV, caption
VIDEOS = [
    ("v1.mp4", (200, 40, 40), "Positive", "I passed my exam"),
    ("v2.avi", (30, 180, 60), "positive", "Great news, everyone"),
    ("missing.mp4", None, "Positive", "never recorded"),
    ("v3.mp4", (20, 20, 220), "1", ""),
    ("v4.avi", (220, 200, 30), "POSITIVE", "We won"),
    ("corrupt.avi", None, "Negative", "damaged upload"),
    ("v5.mp4", (120, 30, 160), "Negative", "I lost my keys"),
    ("v6.avi", (30, 160, 170), "0", "Bad day"),
    ("v7.mp4", (90, 90, 90), "negative", "The train is late again"),
]
TRUE = {"v1.mp4": "Positive", "v2.avi": "Positive", "v3.mp4": "Positive", "v4.avi": "Positive",
        "v5.mp4": "Negative", "v6.avi": "Negative", "v7.mp4": "Negative"}


def make_golden_set(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, colour, _, _ in VIDEOS:
        if colour is not None:
            solid_video(root / name, colour)
    (root / "corrupt.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(range(256)) * 8)
    write_labels(root / "golden_labels.csv", [[name, label, caption] for name, _, label, caption in VIDEOS])
    return root


def keyed(root: Path, by_video: dict[str, object], size: int = 224) -> str:
    """A ScriptedEngine script file (``answers`` or ``scores``) keyed by what each video's frames
    look like once decoded and resized."""
    path = root.parent / f"script-{len(list(root.parent.glob('script-*.json')))}.json"
    path.write_text(json.dumps({frame_key(root / name, size): value for name, value in by_video.items()}))
    return str(path)
