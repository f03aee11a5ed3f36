"""Crash-safe predictions: one JSON line per finished sample, flushed and synced as it goes."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


class PredictionStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        """Records by sample id. A last line cut short by a crash is ignored (it is redone)."""
        records: dict[str, dict] = {}
        if not self.path.is_file():
            return records
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: ignoring a partly written line (interrupted run)", self.path)
                    continue
                records[record["id"]] = record
        return records

    def append(self, records: Iterable[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
