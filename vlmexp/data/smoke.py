"""Smoke-detection datasets on disk.

``sequences``: ``root/<sequence>/<frame>.jpg`` with an optional YOLO label ``<frame>.txt`` beside
each frame. ``yolo``: ``root/images/*`` with ``root/labels/<stem>.txt`` (D-Fire layout).
A label line is ``class cx cy w h``, normalised to 0..1; a missing or empty file means no smoke.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from vlmexp.data.images import broken_links, is_image, natural_key
from vlmexp.data.text import read_text
from vlmexp.errors import DataError

log = logging.getLogger(__name__)

# FIgLib names end in a signed offset in seconds from ignition: 1465065308_+00060.jpg
_OFFSET = re.compile(r"_([+-]\d+)$")


@dataclass
class SmokeFrame:
    id: str
    path: Path
    sequence: str | None  # None for single images (yolo layout)
    index: int  # position in the sequence after ordering and striding
    boxes: list[list[float]] = field(default_factory=list)  # smoke boxes, [cx, cy, w, h]
    time_s: float | None = None
    # Set on the robustness copy: the seed of its camera-shake + motion-blur perturbation.
    perturb_seed: int | None = None
    source: str | None = None  # the source folder (camera, dataset) with data.by_source=true

    @property
    def has_smoke(self) -> bool:
        return bool(self.boxes)


def read_yolo_labels(path: Path, smoke_classes: set[int]) -> list[list[float]]:
    """Smoke boxes of one label file; a malformed line raises DataError naming file and line."""
    return [coords for cls, coords in read_yolo_boxes(path) if cls in smoke_classes]


def read_yolo_boxes(path: Path) -> list[tuple[int, list[float]]]:
    """``(class id, [cx, cy, w, h])`` of every line of a YOLO label file (none when the file is absent);
    a malformed line raises DataError naming file and line."""
    if not path.is_file():
        return []
    boxes = []
    for lineno, line in enumerate(read_text(path, "YOLO label file").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 fields 'class cx cy w h', got {len(parts)}")
            cls = int(parts[0])
            coords = [float(p) for p in parts[1:]]
            if not all(0.0 <= c <= 1.0 for c in coords):
                raise ValueError("coordinates must be normalised to 0..1")
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: malformed YOLO label line {line.strip()!r} ({exc})") from None
        boxes.append((cls, coords))
    return boxes


def _frame_time(stem: str) -> float | None:
    match = _OFFSET.search(stem)
    return float(match.group(1)) if match else None


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, with a warning naming the links in it that loop or point nowhere."""
    try:
        broken = broken_links(folder)
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    if broken:
        log.warning("%s: skipping %d link(s) that loop or point nowhere: %s", folder, len(broken),
                    ", ".join(broken[:5]) + (" ..." if len(broken) > 5 else ""))
    return entries


def _order(paths: list[Path]) -> list[Path]:
    times = [_frame_time(p.stem) for p in paths]
    if paths and all(t is not None for t in times):
        return [p for _, p in sorted(zip(times, paths), key=lambda tp: tp[0])]
    return sorted(paths, key=lambda p: natural_key(p.name))


def load_sequences(root: Path, smoke_classes: set[int], frame_stride: int = 1) -> list[SmokeFrame]:
    frames: list[SmokeFrame] = []
    sequence_dirs = sorted((d for d in _entries(root) if d.is_dir()), key=lambda d: natural_key(d.name))
    if not sequence_dirs:
        raise DataError(f"{root}: no sequence folders (expected data.root/<sequence>/<frame>.jpg; "
                        "use data.format=yolo for images/ + labels/)")
    for seq_dir in sequence_dirs:
        ordered = _order([p for p in _entries(seq_dir) if p.is_file() and is_image(p)])
        for index, path in enumerate(ordered[::max(1, frame_stride)]):
            frames.append(SmokeFrame(id=f"{seq_dir.name}/{path.name}", path=path, sequence=seq_dir.name,
                                     index=index, boxes=read_yolo_labels(path.with_suffix(".txt"), smoke_classes),
                                     time_s=_frame_time(path.stem)))
    return frames


def load_yolo(root: Path, smoke_classes: set[int]) -> list[SmokeFrame]:
    images_dir, labels_dir = root / "images", root / "labels"
    if not images_dir.is_dir():
        raise DataError(f"{root}: data.format=yolo expects an images/ folder (and labels/ beside it)")
    paths = sorted((p for p in _entries(images_dir) if p.is_file() and is_image(p)), key=lambda p: natural_key(p.name))
    return [SmokeFrame(id=p.name, path=p, sequence=None, index=0,
                       boxes=read_yolo_labels(labels_dir / f"{p.stem}.txt", smoke_classes)) for p in paths]


class SequencesLayout:
    """``data.format=sequences``: ``root/<sequence>/<frame>.jpg`` with YOLO labels beside the frames."""

    def read(self, root: Path, smoke_classes: set[int], frame_stride: int = 1) -> list[SmokeFrame]:
        return load_sequences(root, smoke_classes, frame_stride)


class YoloLayout:
    """``data.format=yolo``: ``root/images/*`` and ``root/labels/<stem>.txt`` (D-Fire); single images."""

    def read(self, root: Path, smoke_classes: set[int], frame_stride: int = 1) -> list[SmokeFrame]:
        return load_yolo(root, smoke_classes)


def load_smoke_dataset(root: str | Path, fmt=None, smoke_classes=(0,), frame_stride: int = 1,
                       limit: int | None = None, by_source: bool = False) -> list[SmokeFrame]:
    """The frames under ``root`` as read by ``fmt`` (a layout's reader; default: sequences). With
    ``by_source``, each folder of ``root`` is a source read by ``fmt``; ids and sequences are prefixed
    with its name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data.root={root}: folder does not exist")
    reader, classes = fmt or SequencesLayout(), {int(c) for c in smoke_classes}
    if by_source:
        sources = sorted((d for d in _entries(root) if d.is_dir()), key=lambda d: natural_key(d.name))
        if not sources:
            raise DataError(f"{root}: data.by_source=true expects one folder per source (camera, dataset)")
        frames = [replace(f, id=f"{src.name}/{f.id}", source=src.name,
                          sequence=None if f.sequence is None else f"{src.name}/{f.sequence}")
                  for src in sources for f in reader.read(src, classes, frame_stride)]
    else:
        frames = reader.read(root, classes, frame_stride)
    if not frames:
        raise DataError(f"{root}: no images found")
    return frames[:limit] if limit is not None else frames
