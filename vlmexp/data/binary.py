"""Binary classification datasets: JSONL lines with ``image_path``, ``text`` and ``label`` (0 or 1)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmexp.data.jsonl import MissingImages, read_jsonl
from vlmexp.errors import DataError


@dataclass(frozen=True)
class BinarySample:
    id: str  # "<split>:<line>", unique within a run
    path: Path  # the image file (the provenance fingerprint reads its size)
    text: str
    label: int
    source: str  # file:line, for messages


class BinaryJsonlFormat:
    """``data.format=jsonl``: one {image_path, text, label} object per line."""

    def read(self, path: str | Path, split: str, missing: MissingImages, limit: int | None = None):
        return load_binary_jsonl(path, split, missing, limit)


def load_binary_jsonl(path: str | Path, split: str, missing: MissingImages,
                      limit: int | None = None) -> list[BinarySample]:
    """The usable samples of one file; samples whose image does not exist are counted in ``missing``."""
    samples = []
    for line in read_jsonl(path):
        image = line.image_path()
        text = line.field("text", str)
        label = line.field("label", int)
        if label not in (0, 1):
            raise DataError(f"{line.where}: key 'label' must be 0 or 1, got {label}")
        if missing.exists(line, image):
            samples.append(BinarySample(f"{split}:{line.lineno}", image, text, label, line.where))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise DataError(f"{path}: no usable samples (every line's image is missing, or the file is empty)")
    return samples
