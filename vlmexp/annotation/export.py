"""Writing the annotated dataset: ``annotations.json`` (every image: size, split, objects with class,
score, sources and caption, and its Q&A pairs), ``<split>_llava.json`` (LLaVA conversations, ``image``
relative to the images folder) and ``<split>.jsonl`` (vlmexp VQA lines, ``image_path`` relative to the
JSONL file), and an ``images`` link to the images folder, so ``task=vqa data.root=<folder>`` reads the
export as it is. A split with no image is not written."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from vlmexp.annotation.split import SPLITS
from vlmexp.atomic import write_text_atomic

log = logging.getLogger(__name__)

IMAGES_LINK = "images"


def llava_record(entry: dict) -> dict:
    """One image's Q&A pairs as a LLaVA conversation; ``<image>`` opens the first human turn."""
    turns = []
    for i, pair in enumerate(entry["qa"]):
        question = f"<image>\n{pair['question']}" if i == 0 else pair["question"]
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": pair["answer"]}]
    return {"id": entry["image"], "image": entry["image"], "conversations": turns}


def _dump(path: Path, value) -> Path:
    write_text_atomic(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")
    os.chmod(path, 0o644)  # a dataset to share, not a private temporary file
    return path


def write_dataset(folder: Path, images_root: Path, entries: Sequence[dict]) -> dict[str, Path]:
    """The dataset files of ``entries`` (annotations.json entries, each with ``split``) under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"annotations": _dump(folder / "annotations.json",
                                  {"images_root": str(images_root.resolve()), "images": list(entries)})}
    _link_images(folder, images_root)
    for split in SPLITS:
        chosen = [e for e in entries if e["split"] == split and e["qa"]]
        for stale in (folder / f"{split}_llava.json", folder / f"{split}.jsonl"):
            stale.unlink(missing_ok=True)
        if not chosen:
            log.warning("annotate: no image in the %s split; %s_llava.json is not written", split, split)
            continue
        files[f"{split}_llava"] = _dump(folder / f"{split}_llava.json", [llava_record(e) for e in chosen])
        lines = [json.dumps({"image_path": f"{IMAGES_LINK}/{e['image']}", "question": p["question"],
                             "answer": p["answer"]}, ensure_ascii=False) for e in chosen for p in e["qa"]]
        write_text_atomic(folder / f"{split}.jsonl", "\n".join(lines) + "\n")
        os.chmod(folder / f"{split}.jsonl", 0o644)
        files[f"{split}_jsonl"] = folder / f"{split}.jsonl"
    return files


def _link_images(folder: Path, images_root: Path) -> None:
    link = folder / IMAGES_LINK
    if link.resolve() == images_root.resolve():
        return
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        log.warning("%s exists and is not a link to %s; the JSONL image paths will not resolve", link, images_root)
        return
    try:
        os.symlink(os.path.relpath(images_root.resolve(), folder.resolve()), link, target_is_directory=True)
    except OSError as exc:
        log.warning("cannot link %s to %s (%s): pass data.image_dir=%s to task=vqa", link, images_root, exc,
                    images_root)


def gallery_png(entries: Sequence[dict], images_root: Path, path: Path, size: int = 12, columns: int = 4,
                tile: int = 320) -> Path | None:
    """The first ``size`` images with objects: fused boxes labelled with class and score, captions below."""
    import textwrap

    from PIL import Image, ImageDraw

    chosen = [e for e in entries if e["objects"]][:size]
    if not chosen:
        return None
    text_h = 14 * 6
    rows = (len(chosen) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + text_h)), "white")
    for k, entry in enumerate(chosen):
        with Image.open(images_root / entry["image"]) as img:
            img = img.convert("RGB")
            scale = tile / max(img.size)
            img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))))
        pen = ImageDraw.Draw(img)
        lines = []
        for i, obj in enumerate(entry["objects"], start=1):
            box = [v * scale for v in obj["box"]]
            pen.rectangle(box, outline="red", width=2)
            pen.text((box[0] + 2, box[1] + 1), f"{i} {obj['label']} {obj['score']:.2f}", fill="red")
            lines += textwrap.wrap(f"{i}: {obj.get('caption') or ''}", 52)
        x, y = (k % columns) * tile, (k // columns) * (tile + text_h)
        sheet.paste(img, (x, y))
        ImageDraw.Draw(sheet).multiline_text((x + 2, y + tile + 2), "\n".join([entry["image"], *lines][:6]),
                                             fill="black")
    sheet.save(path)
    return path
