"""Golden-labels sentiment sets: a folder of videos plus a CSV ``video_name,label[,caption]``.

``video_name`` is a file name in the folder, extension included. Labels are ``Positive`` or
``Negative`` in any case, or ``1`` / ``0``. A malformed labels file stops the run with one line
naming file, row and value; a listed video that is missing is kept as a sample (the task skips
and counts it), so that every listed video shows up in the run's files.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from vlmexp.data.text import read_text
from vlmexp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = "Positive", "Negative"
LABELS = (POSITIVE, NEGATIVE)
DEFAULT_LABELS_FILE = "golden_labels.csv"
REQUIRED_COLUMNS = ("video_name", "label")
_LABEL_VALUES = {"positive": POSITIVE, "1": POSITIVE, "negative": NEGATIVE, "0": NEGATIVE}


@dataclass
class SentimentVideo:
    id: str  # the video_name: unique within the labels file
    path: Path
    label: str  # Positive | Negative
    caption: str = ""
    row: int = 0  # line of the labels file


def normalise_label(value: str) -> str | None:
    """``Positive``/``Negative`` for a recognised label value, else None."""
    return _LABEL_VALUES.get(str(value).strip().lower())


def resolve_labels_file(root: Path, labels_file: str | None) -> Path:
    """``data.labels_file``: absolute, or relative to the working directory, else to ``data.root``;
    null means ``golden_labels.csv`` in ``data.root``."""
    if labels_file is None:
        path = root / DEFAULT_LABELS_FILE
        if not path.is_file():
            raise DataError(f"{path}: no labels file (set data.labels_file, or put {DEFAULT_LABELS_FILE} "
                            "with columns video_name,label[,caption] in data.root)")
        return path
    given = Path(labels_file).expanduser()
    for path in (given, root / given):
        if path.is_file():
            return path
    raise DataError(f"data.labels_file={labels_file}: no such file (looked in the working directory and in {root})")


def read_labels(path: Path) -> list[tuple[int, str, str, str]]:
    """Rows of ``(line, video_name, label, caption)``; DataError naming file, row and value."""
    try:
        with io.StringIO(read_text(path, "labels file"), newline="") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                found = ", ".join(columns) or "none"
                raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}; "
                                "expected video_name,label[,caption])")
            reader.fieldnames = columns
            rows = []
            for record in reader:
                line = reader.line_num
                name = (record.get("video_name") or "").strip()
                raw = record.get("label") or ""
                if not name:
                    raise DataError(f"{path}:{line}: empty video_name")
                label = normalise_label(raw)
                if label is None:
                    raise DataError(f"{path}:{line}: unknown label {raw!r} for {name} "
                                    "(expected Positive/Negative in any case, or 1/0)")
                rows.append((line, name, label, (record.get("caption") or "").strip()))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from None
    return rows


def load_golden_labels(root: str | Path | None, labels_file: str | None = None,
                       limit: int | None = None) -> list[SentimentVideo]:
    """The labelled videos in file order, the first ``limit`` rows when a limit is given."""
    if root is None:
        raise ConfigError("task=sentiment needs data.root: a folder of videos with a labels file "
                          f"({DEFAULT_LABELS_FILE}: video_name,label[,caption])")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={root}: folder does not exist")
    path = resolve_labels_file(root, labels_file)
    rows = read_labels(path)
    if not rows:
        raise DataError(f"{path}: no rows (expected video_name,label[,caption])")
    seen: dict[str, int] = {}
    videos = []
    for line, name, label, caption in rows:
        if name in seen:
            raise DataError(f"{path}:{line}: duplicate video_name {name!r} (first at line {seen[name]})")
        seen[name] = line
        videos.append(SentimentVideo(id=name, path=root / name, label=label, caption=caption, row=line))
    if limit is not None:
        videos = videos[:limit]
    missing = [v.id for v in videos if not v.path.is_file()]
    if missing:
        log.warning("%d of %d listed videos are missing from %s (skipped and counted): %s", len(missing),
                    len(videos), root, ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return videos
