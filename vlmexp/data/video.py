"""Video files: uniform frame sampling with OpenCV, frames returned as RGB PIL images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


class UnreadableVideo(Exception):
    """The file is missing, truncated, not a video, or has no decodable frame."""


@dataclass
class SampledVideo:
    frames: list[Any]  # PIL RGB images in time order
    indices: list[int]  # frame numbers they were taken from
    total_frames: int  # decodable frames in the file
    fps: float  # the file's frame rate (0.0 when the container does not say)

    @property
    def sampled_fps(self) -> float:
        """Frames per second of the sampled frames, so that a video model sees the real time span."""
        if self.fps <= 0 or self.total_frames <= 1:
            return 1.0
        duration = self.total_frames / self.fps
        return len(self.frames) / duration

    @property
    def center(self):
        """The central sampled frame (index ``n // 2``)."""
        return self.frames[len(self.frames) // 2]


def uniform_indices(total: int, count: int) -> list[int]:
    """``count`` frame numbers spread evenly from the first to the last frame (repeats when
    the video has fewer frames than asked for)."""
    import numpy as np

    if total < 1 or count < 1:
        return []
    return [int(i) for i in np.linspace(0, total - 1, count).round().astype(int)]


def _decode(path: Path, wanted: list[int]) -> tuple[dict[int, Any], int]:
    """Read the file once from the start; keep the wanted frames (BGR arrays). Returns the kept
    frames and the number of frames that decoded before the stream ended."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UnreadableVideo(f"{path}: OpenCV cannot open it (not a video, or an unsupported codec)")
    kept: dict[int, Any] = {}
    targets = set(wanted)
    last = max(wanted) if wanted else -1
    index = 0
    try:
        while True:
            if not capture.grab():
                break
            if index in targets:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    break
                kept[index] = frame
            index += 1
            if wanted and index > last:
                break
    finally:
        capture.release()
    return kept, index


def _frame_count(path: Path) -> tuple[int, float]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise UnreadableVideo(f"{path}: OpenCV cannot open it (not a video, or an unsupported codec)")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    return max(total, 0), fps if fps > 0 else 0.0


def sample_frames(path: str | Path, num_frames: int = 8) -> SampledVideo:
    """``num_frames`` frames sampled uniformly over the whole video, converted BGR -> RGB.

    The container's frame count is a hint: when the stream ends early (a truncated file) or the
    count is missing, the frames are sampled again over the frames that actually decode.
    Raises :class:`UnreadableVideo` for a missing or undecodable file.
    """
    import cv2
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise UnreadableVideo(f"{path}: no such file")
    if num_frames < 1:
        raise ValueError(f"num_frames={num_frames}: must be >= 1")
    try:
        total, fps = _frame_count(path)
        if total < 1:
            _, total = _decode(path, [])  # count by decoding
        wanted = uniform_indices(total, num_frames)
        kept, decoded = _decode(path, wanted)
        if decoded < total:  # fewer frames than the header claims
            total = decoded
            wanted = uniform_indices(total, num_frames)
            kept, _ = _decode(path, wanted)
    except cv2.error as exc:
        raise UnreadableVideo(f"{path}: OpenCV error: {str(exc).strip().splitlines()[-1]}") from exc
    if total < 1 or any(i not in kept for i in wanted):
        raise UnreadableVideo(f"{path}: no decodable video frames")
    frames = [Image.fromarray(cv2.cvtColor(kept[i], cv2.COLOR_BGR2RGB)) for i in wanted]
    return SampledVideo(frames=frames, indices=wanted, total_frames=total, fps=fps)
