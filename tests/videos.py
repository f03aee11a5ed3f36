"""Real video files for tests, written with OpenCV (MJPG in .avi, mp4v in .mp4: both work here)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}


def write_video(path: Path, colours: Sequence[tuple[int, int, int]], size: tuple[int, int] = (64, 48),
                fps: float = 10.0) -> Path:
    """One solid frame per RGB colour, in order."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[path.suffix]), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {path.suffix} here"
    for r, g, b in colours:
        writer.write(np.full((size[1], size[0], 3), (b, g, r), np.uint8))  # OpenCV frames are BGR
    writer.release()
    return path


def solid_video(path: Path, colour: tuple[int, int, int], frames: int = 12) -> Path:
    return write_video(path, [colour] * frames)


def decoded_colour(path: Path, frame: int = 0) -> tuple[int, int, int]:
    """The RGB colour OpenCV decodes for one frame (the codec shifts colours by a few levels)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    for _ in range(frame + 1):
        ok, bgr = capture.read()
        assert ok, f"cannot read frame {frame} of {path}"
    capture.release()
    b, g, r = (int(v) for v in bgr[0, 0])
    return r, g, b


def write_labels(path: Path, rows: Sequence[Sequence[str]], header: Sequence[str] = ("video_name", "label",
                                                                                       "caption")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def frame_key(path: Path, size: int = 224) -> str:
    """The ScriptedEngine key of a solid-colour video's frames as the task sends them."""
    from PIL import Image

    from tests.helpers import image_key

    return image_key(Image.new("RGB", (size, size), decoded_colour(path)))
