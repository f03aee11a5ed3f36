"""Crash-safe predictions: one JSON line per finished sample, flushed and synced as it goes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from vlmexp.atomic import write_text_atomic

log = logging.getLogger(__name__)


class PredictionStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        """Records by sample id. A line cut short by a crash is ignored (it is redone)."""
        records: dict[str, dict] = {}
        if not self.path.is_file():
            return records
        with self.path.open("rb") as fh:
            for line in fh:
                record = _parse(line)
                if record is None:
                    log.warning("%s: ignoring a partly written line (interrupted run)", self.path)
                    continue
                records[record["id"]] = record
        return records

    def append(self, records: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair_tail()
        with self.path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(_line(record))
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file with ``records``, atomically (a kill leaves the old file or the new one)."""
        write_text_atomic(self.path, "".join(_line(record) for record in records))

    def repair_tail(self) -> None:
        """Make the file end with a whole line, so the next record does not land on a torn one: a last
        line cut short by a kill is cut off; one that lost only its newline gets it back."""
        if not self.path.is_file():
            return
        with self.path.open("r+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return
            fh.seek(end - 1)
            if fh.read(1) == b"\n":
                return
            start = _last_line_start(fh, end)
            fh.seek(start)
            tail = fh.read()
            if _parse(tail) is not None:
                fh.write(b"\n")
            else:
                log.warning("%s: cutting off a partly written last line (interrupted run)", self.path)
                fh.truncate(start)
            fh.flush()
            os.fsync(fh.fileno())


def _line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n"


def _parse(line: bytes) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "id" in record else None


def _last_line_start(fh, end: int, chunk: int = 64 * 1024) -> int:
    """Offset just past the last newline before ``end`` (0 when there is none)."""
    pos = end
    while pos > 0:
        step = min(chunk, pos)
        fh.seek(pos - step)
        found = fh.read(step).rfind(b"\n")
        if found >= 0:
            return pos - step + found + 1
        pos -= step
    return 0


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
