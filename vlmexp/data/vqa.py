"""Visual question answering files: one (image, question, answer) sample per question.

``jsonl``: one JSON object per line with ``image_path``, ``question`` and ``answer``; the image path is
absolute or relative to the JSONL file's folder. ``llava``: a LLaVA-style JSON list of records with
``id``, ``image`` (relative to ``data.image_dir``, else to the JSON file's folder) and
``conversations``, alternating ``from: human`` / ``from: gpt`` turns; every human/gpt pair becomes one
sample, with the ``<image>`` placeholder removed from the question.

A sample whose image file does not exist is dropped and counted; a malformed line or record stops
with a :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from vlmexp.data.jsonl import read_jsonl, resolve_image_path
from vlmexp.data.text import read_text
from vlmexp.errors import DataError

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"


@dataclass
class VQASample:
    id: str  # "<split>:<line or record id>", unique over a run's splits
    path: Path  # the image file
    question: str
    answer: str
    split: str


@dataclass
class VQAFile:
    samples: list[VQASample]
    missing_images: int  # samples dropped because their image file does not exist


def _text(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string (got {value!r})")
    return value.strip()


class JsonlFormat:
    """``data.format=jsonl``: one {image_path, question, answer} object per line."""

    file_name = "{split}.jsonl"  # a split's file in an exported dataset folder (data.root)

    def read(self, path: Path, split: str, image_dir: str | Path | None = None) -> list[VQASample]:
        return _jsonl_samples(path, split)


class LlavaFormat:
    """``data.format=llava``: a LLaVA conversations JSON list; images under ``data.image_dir`` (else beside it)."""

    file_name = "{split}_llava.json"

    def read(self, path: Path, split: str, image_dir: str | Path | None = None) -> list[VQASample]:
        return _llava_samples(path, Path(image_dir).expanduser() if image_dir else path.parent, split)


def _jsonl_samples(path: Path, split: str) -> list[VQASample]:
    samples = []
    for line in read_jsonl(path):
        record, where = line.data, line.where
        image = resolve_image_path(_text(record, "image_path", where), path)
        samples.append(VQASample(f"{split}:{line.lineno}", image, _text(record, "question", where),
                                 _text(record, "answer", where), split))
    return samples


def _json_records(path: Path) -> list[tuple[int, object]]:
    """The elements of a top-level JSON list, each with the line it starts on."""
    text = read_text(path, "LLaVA JSON file")
    decoder = json.JSONDecoder()

    def fail(pos: int, why: str):
        lineno = text.count("\n", 0, pos) + 1
        return DataError(f"{path}:{lineno}: malformed LLaVA JSON ({why})")

    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise fail(pos, "expected a list of records")
    records, pos = [], pos + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise fail(pos, "the list is not closed with ']'")
        if text[pos] == "]":
            return records
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        except RecursionError:
            raise fail(pos, "nested too deeply to read") from None
        records.append((text.count("\n", 0, pos) + 1, value))
        pos = end


def _llava_samples(path: Path, image_dir: Path, split: str) -> list[VQASample]:
    samples, first_line_of = [], {}
    for lineno, record in _json_records(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a record with id, image and conversations")
        record_id = str(record.get("id", lineno))
        if record_id in first_line_of:  # two records would share sample ids, and one's answers the other's
            raise DataError(f"{where}: duplicate id {record_id!r} (first at line {first_line_of[record_id]})")
        first_line_of[record_id] = lineno
        image = Path(_text(record, "image", where)).expanduser()
        image = image if image.is_absolute() else image_dir / image
        turns = record.get("conversations")
        if not isinstance(turns, list) or not turns or len(turns) % 2:
            raise DataError(f"{where}: 'conversations' must be a list of human/gpt turn pairs")
        for k in range(0, len(turns), 2):
            human, gpt = turns[k], turns[k + 1]
            if not (isinstance(human, dict) and isinstance(gpt, dict)
                    and human.get("from") == "human" and gpt.get("from") == "gpt"):
                raise DataError(f"{where}: conversation turns {k + 1} and {k + 2} must be from human, then gpt")
            question = _text(human, "value", where).replace(IMAGE_PLACEHOLDER, "").strip()
            samples.append(VQASample(f"{split}:{record_id}#{k // 2}", image, question,
                                     _text(gpt, "value", where), split))
    return samples


def load_vqa_file(path: str | Path, split: str, fmt=None, image_dir: str | Path | None = None) -> VQAFile:
    """Samples of one split file read by ``fmt`` (a format's reader; default JSONL), without those whose
    image does not exist (counted)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    samples = (fmt or JsonlFormat()).read(path, split, image_dir)
    kept = [s for s in samples if s.path.is_file()]
    missing = len(samples) - len(kept)
    if missing:
        first = next(s for s in samples if not s.path.is_file())
        log.warning("%s: skipping %d of %d questions whose image does not exist (first: %s)",
                    path, missing, len(samples), first.path)
    return VQAFile(kept, missing)
