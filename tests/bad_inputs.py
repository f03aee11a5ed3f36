"""The bad-input corpus: every kind of damaged or odd input file a dataset on disk can hold, for each
task that reads it. A case says what a run must make of it:

- ``skipped``: the run finishes; the sample is left out and counted in the metric named in ``expect``;
- ``read``: the run finishes and uses the file as intended (``expect``: metrics it must give);
  ``warning``, when given, is a part of the warning line the run must log;
- ``error``: the run stops with one line (``expect``: a part of it), no traceback.

``README.md`` ("Bad input") lists the cases; ``test_bad_inputs.py`` runs them all.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SMOKE_LABEL = "0 0.5 0.5 0.4 0.4\n"  # the engine answers "no smoke" to every frame: accuracy tells the labels


@dataclass(frozen=True)
class Case:
    id: str
    task: str  # smoke | vqa | binary | sentiment
    outcome: str  # skipped | read | error
    what: str  # the input, in words (README table)
    write: Callable[[Path], None]  # adds or damages files in the task's base set under the given root
    expect: dict | str = field(default_factory=dict)
    warning: str = ""  # for skipped and read cases: a part of the warning that names the file


# -- files -----------------------------------------------------------------------------------------
def png_bytes(size=(32, 32), colour=(200, 60, 60), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(size=(32, 32), colour=(200, 60, 60), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, format="JPEG")
    return out.getvalue()


def huge_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A valid, black ``width`` x ``height`` RGB PNG, written row by row (about 1 MB on disk, never
    held in memory whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row, packer, parts = bytes(1 + 3 * width), zlib.compressobj(1), []
    for _ in range(height):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
                     + chunk(b"IEND", b""))


def sixteen_bit_png(path: Path, value: int = 32896) -> None:
    """A 16-bit greyscale PNG of one level (32896 = 128 x 257, 8-bit grey 128)."""
    Image.fromarray(np.full((32, 32), value, dtype=np.uint16)).save(path)


def palette_png(path: Path) -> None:
    Image.new("RGB", (32, 32), (20, 200, 20)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def symlink(link: Path, target: str) -> None:
    os.symlink(target, link)


# -- smoke: data.root/seq/f1..f4.png, smoke in f3 and f4 ------------------------------------------
def write_smoke_base(root: Path) -> None:
    seq = root / "seq"
    seq.mkdir(parents=True)
    for i in range(1, 5):
        (seq / f"f{i}.png").write_bytes(png_bytes(colour=(40 * i, 90, 160)))
    for i in (3, 4):
        (seq / f"f{i}.txt").write_text(SMOKE_LABEL)


def _frame(name: str, data: bytes | Callable[[Path], None]):
    def write(root: Path) -> None:
        path = root / "seq" / name
        data(path) if callable(data) else path.write_bytes(data)
    return write


def _label(text: bytes, frame: str = "f1"):
    def write(root: Path) -> None:
        (root / "seq" / f"{frame}.txt").write_bytes(text)
    return write


SKIPPED_FRAME = {"skipped_corrupt_images": 1.0, "num_samples": 4.0}
ONE_MORE_FRAME = {"skipped_corrupt_images": 0.0, "num_samples": 5.0}

SMOKE = [
    Case("zero-byte-png", "smoke", "skipped", "zero-byte .png", _frame("f5.png", b""), SKIPPED_FRAME),
    Case("truncated-png", "smoke", "skipped", "PNG cut in half", _frame("f5.png", truncated(png_bytes((64, 64)))),
         SKIPPED_FRAME),
    Case("truncated-jpeg", "smoke", "skipped", "JPEG cut in half",
         _frame("f5.jpg", truncated(jpeg_bytes((64, 64)))), SKIPPED_FRAME),
    Case("text-as-jpeg", "smoke", "skipped", "a text file named .jpg", _frame("f5.jpg", b"not an image\n"),
         SKIPPED_FRAME),
    Case("huge-20000px", "smoke", "skipped", "20000 x 20000 px PNG (400 MP)", _frame("f5.png", huge_png),
         SKIPPED_FRAME, "f5.png: image too large to decode (400 MP; PIL's limit is 179 MP)"),
    Case("elongated-1x500", "smoke", "skipped", "1 x 500 px image (over 200:1)",
         _frame("f5.png", png_bytes((1, 500))), SKIPPED_FRAME, "f5.png: image is 1x500 px, more elongated than 200:1"),
    Case("one-pixel", "smoke", "read", "1 x 1 px image", _frame("f5.png", png_bytes((1, 1))), ONE_MORE_FRAME),
    Case("cmyk-jpeg", "smoke", "read", "CMYK JPEG", _frame("f5.jpg", jpeg_bytes(mode="CMYK", colour=(0, 255, 0, 0))),
         ONE_MORE_FRAME),
    Case("16-bit-png", "smoke", "read", "16-bit greyscale PNG", _frame("f5.png", sixteen_bit_png), ONE_MORE_FRAME),
    Case("palette-png", "smoke", "read", "palette PNG", _frame("f5.png", palette_png), ONE_MORE_FRAME),
    Case("transparent-png", "smoke", "read", "RGBA PNG, fully transparent",
         _frame("f5.png", png_bytes(mode="RGBA", colour=(255, 0, 0, 0))), ONE_MORE_FRAME),
    Case("empty-label", "smoke", "read", "empty label file (no smoke)", _label(b"", "f3"),
         {"num_samples": 4.0, "accuracy": 0.75}),
    Case("bom-label", "smoke", "read", "label file with a UTF-8 byte-order mark",
         _label(codecs.BOM_UTF8 + SMOKE_LABEL.encode()), {"num_samples": 4.0, "accuracy": 0.25}),
    Case("crlf-label", "smoke", "read", "label file with CRLF line ends", _label(SMOKE_LABEL.replace("\n", "\r\n")
                                                                                 .encode()),
         {"num_samples": 4.0, "accuracy": 0.25}),
    Case("latin1-label", "smoke", "error", "label file in Latin-1, not UTF-8",
         _label("0 0.5 0.5 0.4 0.4 # fum\xe9e\n".encode("latin-1")),
         "f1.txt:1: YOLO label file is not UTF-8 text (byte 0xe9 at column 24"),
    Case("label-out-of-range", "smoke", "error", "box coordinate 1.5 (outside 0..1)", _label(b"0 1.5 0.5 0.4 0.4\n"),
         "f1.txt:1: malformed YOLO label line '0 1.5 0.5 0.4 0.4' (coordinates must be normalised to 0..1)"),
    Case("label-wrong-fields", "smoke", "error", "label line with 3 fields", _label(b"0 0.5 0.5\n"),
         "f1.txt:1: malformed YOLO label line '0 0.5 0.5' (expected 5 fields"),
    Case("symlink-loop", "smoke", "read", "links a -> b -> a in data.root and a frame linked to itself",
         lambda root: (symlink(root / "a", "b"), symlink(root / "b", "a"), symlink(root / "seq" / "f5.png", "f5.png")),
         {"num_samples": 4.0}, "skipping 2 link(s) that loop or point nowhere: a, b"),
    Case("link-to-ancestor", "smoke", "read", "a sequence folder holding a link to data.root",
         lambda root: symlink(root / "seq" / "up", ".."), {"num_samples": 4.0}),
    Case("empty-root", "smoke", "error", "data.root with no sequence folders",
         lambda root: [p.unlink() for p in (root / "seq").iterdir()] and (root / "seq").rmdir(),
         "no sequence folders"),
]


# -- vqa: train.jsonl of 3 questions on imgs/a.png, imgs/b.png ------------------------------------
VQA_LINES = [{"image_path": "imgs/a.png", "question": "Colour?", "answer": "red"},
             {"image_path": "imgs/b.png", "question": "Colour?", "answer": "green"},
             {"image_path": "imgs/a.png", "question": "Bright?", "answer": "yes"}]


def write_vqa_base(root: Path) -> None:
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.png").write_bytes(png_bytes(colour=(220, 20, 20)))
    (root / "imgs" / "b.png").write_bytes(png_bytes(colour=(20, 220, 20)))
    (root / "test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in VQA_LINES))


def _vqa_file(transform: Callable[[bytes], bytes]):
    def write(root: Path) -> None:
        path = root / "test.jsonl"
        path.write_bytes(transform(path.read_bytes()))
    return write


def _llava(records: list[dict]):
    def write(root: Path) -> None:
        (root / "test.json").write_text(json.dumps(records, indent=1))
    return write


def _conversation(image: str, question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


VQA = [
    Case("bom-jsonl", "vqa", "read", "JSONL with a UTF-8 byte-order mark", _vqa_file(lambda b: codecs.BOM_UTF8 + b),
         {"test_questions": 3.0}),
    Case("crlf-jsonl", "vqa", "read", "JSONL with CRLF line ends and blank lines",
         _vqa_file(lambda b: b.replace(b"\n", b"\r\n\r\n")), {"test_questions": 3.0}),
    Case("latin1-jsonl", "vqa", "error", "JSONL with a Latin-1 byte on line 2",
         _vqa_file(lambda b: b.replace(b'"green"', b'"gr\xfcn"')), "test.jsonl:2: JSONL file is not UTF-8 text"),
    Case("empty-jsonl", "vqa", "error", "empty JSONL file", _vqa_file(lambda b: b""), "no questions"),
    Case("deeply-nested-jsonl", "vqa", "error", "a line nested 100000 lists deep",
         _vqa_file(lambda b: b + b"[" * 100_000 + b"\n"), "test.jsonl:4: JSON nested too deeply to read"),
    Case("zero-byte-image", "vqa", "skipped", "a question's image is a zero-byte file",
         lambda root: (root / "imgs" / "b.png").write_bytes(b""), {"skipped_corrupt_images": 1.0,
                                                                   "test_questions": 2.0}),
    Case("missing-image", "vqa", "skipped", "a question's image does not exist",
         lambda root: (root / "imgs" / "b.png").unlink(), {"skipped_missing_images": 1.0, "test_questions": 2.0}),
    Case("duplicate-llava-id", "vqa", "error", "LLaVA JSON with two records of one id",
         _llava([{"id": "x", "image": "imgs/a.png", "conversations": _conversation("a", "Colour?", "red")},
                 {"id": "x", "image": "imgs/b.png", "conversations": _conversation("b", "Colour?", "green")}]),
         "duplicate id 'x' (first at line 2)"),
]


# -- binary: test.jsonl, 4 samples ------------------------------------------------------------------
def write_binary_base(root: Path) -> None:
    (root / "imgs").mkdir(parents=True)
    lines = []
    for i in range(4):
        (root / "imgs" / f"{i}.png").write_bytes(png_bytes(colour=(60 * i, 100, 30)))
        lines.append(json.dumps({"image_path": f"imgs/{i}.png", "text": "Is it on fire?", "label": i % 2}))
    (root / "test.jsonl").write_text("\n".join(lines) + "\n")


def _binary_line(index: int, **changes):
    def write(root: Path) -> None:
        path = root / "test.jsonl"
        lines = path.read_text().splitlines()
        lines[index] = json.dumps(dict(json.loads(lines[index]), **changes))
        path.write_text("\n".join(lines) + "\n")
    return write


BINARY = [
    Case("bom-jsonl", "binary", "read", "JSONL with a UTF-8 byte-order mark", _vqa_file(lambda b: codecs.BOM_UTF8 + b),
         {"num_samples": 4.0}),
    Case("latin1-jsonl", "binary", "error", "JSONL with a Latin-1 byte on line 3",
         _vqa_file(lambda b: b.replace(b"on fire?", b"en feu\xe9?", 3).replace(b"en feu\xe9?", b"on fire?", 2)),
         "test.jsonl:3: JSONL file is not UTF-8 text"),
    Case("label-out-of-range", "binary", "error", "label 2 in a 0/1 set", _binary_line(1, label=2),
         "test.jsonl:2: key 'label' must be 0 or 1, got 2"),
    Case("label-as-text", "binary", "error", 'label "1" (a string)', _binary_line(2, label="1"),
         "test.jsonl:3: key 'label' must be int, got \"1\""),
    Case("truncated-image", "binary", "skipped", "an image cut in half",
         lambda root: (root / "imgs" / "1.png").write_bytes(truncated(png_bytes((64, 64)))),
         {"skipped_corrupt_images": 1.0, "num_samples": 3.0}),
]


# -- sentiment: 3 videos and golden_labels.csv ------------------------------------------------------
SENTIMENT_ROWS = [("v1.mp4", "Positive"), ("v2.mp4", "Negative"), ("v3.mp4", "Negative")]


def write_sentiment_base(root: Path) -> None:
    from tests.videos import solid_video

    root.mkdir(parents=True)
    for (name, _), colour in zip(SENTIMENT_ROWS, [(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        solid_video(root / name, colour, frames=4)
    _write_labels(root, [f"{name},{label}" for name, label in SENTIMENT_ROWS])


def _write_labels(root: Path, rows: list[str], prefix: bytes = b"", encoding: str = "utf-8") -> None:
    (root / "golden_labels.csv").write_bytes(prefix + ("video_name,label\n" + "\n".join(rows) + "\n").encode(encoding))


def _labels(rows: list[str], prefix: bytes = b"", encoding: str = "utf-8"):
    return lambda root: _write_labels(root, rows, prefix, encoding)


ROWS = [f"{name},{label}" for name, label in SENTIMENT_ROWS]

SENTIMENT = [
    Case("bom-csv", "sentiment", "read", "labels CSV with a UTF-8 byte-order mark", _labels(ROWS, codecs.BOM_UTF8),
         {"num_samples": 3.0}),
    Case("latin1-csv", "sentiment", "error", "labels CSV in Latin-1",
         _labels([*ROWS, "v\xe9.mp4,Positive"], encoding="latin-1"), "golden_labels.csv:5: labels file is not UTF-8"),
    Case("duplicate-video", "sentiment", "error", "a video listed twice", _labels([*ROWS, "v1.mp4,Negative"]),
         "golden_labels.csv:5: duplicate video_name 'v1.mp4' (first at line 2)"),
    Case("label-out-of-range", "sentiment", "error", "label 'Neutral'", _labels([*ROWS, "v4.mp4,Neutral"]),
         "golden_labels.csv:5: unknown label 'Neutral' for v4.mp4"),
    Case("empty-csv", "sentiment", "error", "empty labels CSV", lambda root: (root / "golden_labels.csv")
         .write_bytes(b""), "missing column(s) video_name, label"),
    Case("zero-byte-video", "sentiment", "skipped", "a zero-byte .mp4",
         lambda root: (root / "v2.mp4").write_bytes(b""), {"skipped_unreadable_videos": 1.0, "num_samples": 2.0}),
    Case("truncated-video", "sentiment", "skipped", "an .mp4 cut in half",
         lambda root: (root / "v2.mp4").write_bytes(truncated((root / "v2.mp4").read_bytes())),
         {"skipped_unreadable_videos": 1.0, "num_samples": 2.0}),
]

CASES = SMOKE + VQA + BINARY + SENTIMENT
