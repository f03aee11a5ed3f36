"""Image files: open safely, recognise by extension, sort naturally."""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class UnreadableImage(Exception):
    """The file is missing, truncated or not an image."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(path: str | Path):
    """Decode the whole file now (PIL is lazy), so corruption shows here and not mid-batch."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types for bad files
        raise UnreadableImage(f"{path}: {type(exc).__name__}: {exc}") from exc


def natural_key(name: str) -> list:
    """'frame10' after 'frame9'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]
