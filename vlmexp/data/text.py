"""Reading a dataset's text files (labels, JSONL, CSV): UTF-8 with or without a byte-order mark.

A file that is not UTF-8 stops the run with one line naming the file, line and column of the first
bad byte, never a ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from vlmexp.errors import DataError


def read_text(path: Path, what: str = "file") -> str:
    """The file's text, a leading byte-order mark dropped; DataError for unreadable or non-UTF-8 files."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{lineno}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at column "
                        f"{exc.start - line_start + 1}; re-save it as UTF-8)") from None
