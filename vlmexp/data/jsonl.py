"""Reading JSON-lines datasets: one object per line, each naming an image file.

Shared by the JSONL loaders of the tasks: a malformed line is a :class:`DataError` naming the file
and line number; an image path is absolute or relative to the JSONL file's folder; a sample whose
image file does not exist is skipped and counted by the caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmexp.data.text import read_text
from vlmexp.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JsonlLine:
    """One parsed line: where it came from and its object."""

    path: Path
    lineno: int
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"

    def field(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """The value of a required key, checked against ``kind``; DataError naming file and line otherwise."""
        if name not in self.data:
            raise DataError(f"{self.where}: missing key '{name}' (keys: {', '.join(sorted(self.data)) or 'none'})")
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join(k.__name__ for k in kinds)
            raise DataError(f"{self.where}: key '{name}' must be {expected}, got {json.dumps(value)}")
        return value

    def image_path(self, name: str = "image_path") -> Path:
        """The image file the line names, resolved against the JSONL file's folder."""
        value = self.field(name, str)
        if not value.strip():
            raise DataError(f"{self.where}: key '{name}' is empty")
        return resolve_image_path(value, self.path)


def resolve_image_path(value: str, jsonl_path: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else jsonl_path.parent / path


def read_jsonl(path: str | Path) -> Iterator[JsonlLine]:
    """The object on each non-blank line, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    # split on "\n" only: splitlines() would also cut at U+2028, which JSON strings may hold unescaped
    for lineno, line in enumerate(read_text(path, "JSONL file").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply to read") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(data).__name__}")
        yield JsonlLine(path, lineno, data)


class MissingImages:
    """Counts samples dropped because their image file does not exist; logs the first few by name."""

    def __init__(self, show: int = 5):
        self.count = 0
        self.show = show

    def exists(self, line: JsonlLine, image: Path) -> bool:
        if image.is_file():
            return True
        self.count += 1
        if self.count <= self.show:
            log.warning("%s: image %s does not exist; skipping the sample", line.where, image)
        elif self.count == self.show + 1:
            log.warning("more samples with missing images; they are counted in skipped_missing_images")
        return False
