"""Image files: open safely, recognise by extension, sort naturally.

Every image reaches a model as 8-bit RGB: CMYK and palette files are converted, transparent pixels
are laid on white (as transformers' ``convert_to_rgb`` does), 16-bit greyscale is scaled to 8 bits
instead of being clipped. A file that cannot become such an image raises :class:`UnreadableImage`
with a short reason, and the task skips and counts the sample.
"""

from __future__ import annotations

import re
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Qwen2-VL's and Qwen2.5-VL's processors refuse images more elongated than this (smart_resize).
MAX_ASPECT_RATIO = 200


class UnreadableImage(Exception):
    """The file is missing, truncated, not an image, or not usable as one."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_image(path: str | Path):
    """Decode the whole file now (PIL is lazy), so corruption shows here and not mid-batch."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            _check_shape(img.size)
            img.load()
            return to_rgb(img)
    except Image.DecompressionBombError as exc:  # PIL refuses before decoding: no memory spent
        numbers = re.findall(r"\d+", str(exc))
        size = f"{int(numbers[0]) / 1e6:.0f} MP; " if numbers else ""
        raise UnreadableImage(f"{path}: image too large to decode ({size}PIL's limit is "
                              f"{2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} MP)") from None
    except UnreadableImage as exc:
        raise UnreadableImage(f"{path}: {exc}") from None
    except Exception as exc:  # PIL raises many types for bad files
        raise UnreadableImage(f"{path}: {type(exc).__name__}: {exc}") from exc


def _check_shape(size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) < 1:
        raise UnreadableImage(f"image has no pixels ({w}x{h})")
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise UnreadableImage(f"image is {w}x{h} px, more elongated than {MAX_ASPECT_RATIO}:1")


def to_rgb(img):
    """An 8-bit RGB copy of ``img`` whatever its mode."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit greyscale ("I" in older Pillow)
        import numpy as np

        pixels = np.asarray(img).astype(np.float64)
        eight_bit = np.clip(pixels * (255 / 65535), 0, 255).round().astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def broken_links(folder: Path) -> list[str]:
    """Names of the links in ``folder`` that loop or point nowhere (listing skips them)."""
    return sorted(p.name for p in folder.iterdir() if p.is_symlink() and not p.exists())


def natural_key(name: str) -> list:
    """'frame10' after 'frame9'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]
