"""Auto-annotation (seed 003 stage 1): detect objects in a folder of images (``detector=``), describe
each in its context (``captioner=``), turn the result into Q&A pairs (``task.qa_templates``), split the
images (``task.split``) and export the dataset as LLaVA conversations and vlmexp VQA JSONL.

Detection and captioning run per batch of images through the crash-safe prediction store, so a rerun
after a crash continues with the images not yet done; the Q&A pairs, the split and the files are
derived from the stored records at the end, deterministically given ``seed``."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import get_class, instantiate

from vlmexp.annotation.export import gallery_png, write_dataset
from vlmexp.annotation.qa import generate_pairs
from vlmexp.annotation.split import SPLITS, check_ratios, split_images
from vlmexp.config.validate import check_target_keys
from vlmexp.data.images import UnreadableImage, is_image, natural_key, open_image
from vlmexp.detectors.base import DetectorInput, build_plugin
from vlmexp.errors import ConfigError, DataError
from vlmexp.tasks.base import Splits, Task

log = logging.getLogger(__name__)


@dataclass
class ImageSample:
    id: str  # the image's path relative to data.root (POSIX)
    path: Path


def list_images(root: Path) -> list[ImageSample]:
    """Every image file under ``root`` (links to folders are not followed), in natural order."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            path = Path(folder) / name
            if is_image(path) and path.exists():
                found.append(ImageSample(path.relative_to(root).as_posix(), path))
    return sorted(found, key=lambda s: natural_key(s.id))


class AnnotateTask(Task):
    modes = ("eval",)
    path_keys = ("root",)
    # Q&A pairs, the split and the files are made from the stored detections and captions
    derived_keys = ("qa_templates", "split", "output_dir", "gallery_size")

    def __init__(self, name: str = "annotate", default_mode: str = "eval", trainer=None, evaluator=None, *,
                 description: str = "",
                 qa_templates: dict | None = None, split: dict | None = None, output_dir: str | None = None,
                 gallery_size: int = 12):
        super().__init__(name, default_mode, trainer, evaluator, description)
        self.template_nodes = qa_templates or {}
        self.split = dict(split or {"train": 0.8, "val": 0.1})
        self.output_dir = output_dir
        self.gallery_size = gallery_size
        self.run = None

    # -- data and plugins -----------------------------------------------------------------------
    def load_splits(self, run) -> Splits:
        cfg = run.cfg
        if not cfg.data.root:
            raise ConfigError("task=annotate needs data.root (the folder of images to annotate)")
        self.ratios = check_ratios(self.split)
        for key, example in (("detector", "labels"), ("captioner", "engine")):
            if not cfg.get(key):
                raise ConfigError(f"task=annotate needs a {key} (e.g. {key}={example})")
            check_target_keys(cfg[key], key, exclude=("run",))
        for name, node in self.template_nodes.items():
            check_target_keys(node, f"task.qa_templates.{name}")
        self.run, self.root = run, Path(cfg.data.root).expanduser()
        self.seed = int(cfg.seed)
        self.templates = {name: instantiate(node) for name, node in self.template_nodes.items()}
        box_node = cfg.model.get("box_format")
        if box_node is None:
            raise ConfigError(f"model.box_format: model={cfg.model.name} names no box convention")
        self.box_format = instantiate(box_node)
        samples = list_images(self.root)
        if not samples:
            raise DataError(f"data.root={self.root}: no images found")
        self.detector = build_plugin(cfg.detector, run)  # missing or wrong weights stop the run here
        self.captioner = build_plugin(cfg.captioner, run)
        if getattr(self.captioner, "needs_engine", False) and not get_class(cfg.engine._target_).serves_model:
            raise ConfigError("captioner=engine asks the run's engine about each object, but this engine serves "
                              "no model: choose engine=hf, ollama or openai (or captioner=blip)")
        return Splits(train=None, val=None, test=samples[:cfg.data.limit])

    # -- annotation -----------------------------------------------------------------------------
    def predict(self, engine, samples: Sequence[ImageSample]) -> list[dict]:
        records, items, kept = [], [], []
        for sample in samples:
            try:
                items.append(DetectorInput(sample.path, open_image(sample.path)))
                kept.append(sample)
            except UnreadableImage as exc:
                log.warning("skipping unreadable image %s", exc)
                records.append({"id": sample.id, "skipped": str(exc)})
        detections = self.detector.detect(items) if items else []
        captions = self.captioner.caption(engine, [i.image for i in items], detections) if items else []
        for sample, item, found, gens in zip(kept, items, detections, captions):
            errors = [g.error for g in gens if g.error]
            records.append({
                "id": sample.id, "image": sample.id, "width": item.image.size[0], "height": item.image.size[1],
                "objects": [dict(d.to_dict(), caption=g.text.strip()) for d, g in zip(found, gens)],
                "error": errors[0] if errors else None,
                "prompt_tokens": sum(g.prompt_tokens or 0 for g in gens),
                "completion_tokens": sum(g.completion_tokens or 0 for g in gens),
                "truncated": any(g.truncated for g in gens), "latency_s": sum(g.latency_s for g in gens)})
        order = {sample.id: i for i, sample in enumerate(samples)}
        return sorted(records, key=lambda r: order[r["id"]])

    def entries(self, records: list[dict]) -> list[dict]:
        """annotations.json's per-image entries: objects, split and Q&A pairs of every readable image."""
        done = [r for r in records if not r.get("skipped")]
        splits = split_images([r["image"] for r in done], *self.ratios, self.seed)
        vocabulary = self.detector.classes()
        out = []
        for r in done:
            pairs = generate_pairs(r, self.templates, vocabulary, self.box_format, self.seed)
            out.append({"image": r["image"], "width": r["width"], "height": r["height"], "split": splits[r["image"]],
                        "objects": r["objects"], "qa": [p.to_dict() for p in pairs]})
        return out

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        entries = self.entries(records)
        boxes = Counter(o["label"] for e in entries for o in e["objects"])
        pairs = Counter(p["template"] for e in entries for p in e["qa"])
        splits = Counter(e["split"] for e in entries)
        metrics = {"images": float(len(entries)),
                   "skipped_corrupt_images": float(sum(1 for r in records if r.get("skipped"))),
                   "engine_errors": float(sum(1 for r in records if r.get("error"))),
                   "boxes": float(sum(boxes.values())), "qa_pairs": float(sum(pairs.values()))}
        metrics.update({f"boxes_{label}": float(n) for label, n in sorted(boxes.items())})
        metrics.update({f"qa_pairs_{name}": float(pairs[name]) for name in self.templates})
        metrics.update({f"{split}_images": float(splits[split]) for split in SPLITS})
        return metrics

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        """The dataset (``task.output_dir``, default ``<run output>/dataset``), logged under ``dataset/`` and
        registered as the run's input; returns the gallery for the runner to log."""
        entries = self.entries(records)
        folder = Path(self.output_dir).expanduser() if self.output_dir else out_dir / "dataset"
        files = write_dataset(folder, self.root, entries)
        tracker = self.run.tracker
        for path in files.values():
            tracker.log_artifact(path, "dataset")
        tracker.log_input(name=f"annotate-{self.root.name}", source=str(folder.resolve()),
                          digest=hashlib.sha256(files["annotations"].read_bytes()).hexdigest()[:16],
                          context="annotation",
                          profile={"images": len(entries), "qa_pairs": int(metrics.get("qa_pairs", 0)),
                                   **{s: int(metrics.get(f"{s}_images", 0)) for s in SPLITS}})
        print(f"annotate: wrote {len(entries)} images and {int(metrics.get('qa_pairs', 0))} Q&A pairs to {folder}")
        gallery = gallery_png(entries, self.root, out_dir / "gallery.png", self.gallery_size)
        return [gallery] if gallery else []

    def summary_keys(self) -> list[str]:
        return ["images", "skipped_corrupt_images", "boxes", "qa_pairs", "train_images", "val_images",
                "test_images", "engine_errors"]
