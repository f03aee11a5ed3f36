"""Visual question answering: fine-tune on (image, question, answer) files, score exact match.

Evaluation covers the validation file (``exact_match``) and the test file when one is given
(``test_exact_match``) in one crash-safe pass; both compare answers after normalising case,
punctuation and articles. During fine-tuning the trainer calls :meth:`VQATask.epoch_metrics` after
every epoch for the validation exact match of the model being trained (``val_exact_match``).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from vlmexp.data.formats import data_format
from vlmexp.data.images import UnreadableImage, open_image
from vlmexp.data.vqa import VQASample, load_vqa_file
from vlmexp.errors import ConfigError, DataError
from vlmexp.evaluation.answers import is_exact_match
from vlmexp.evaluation.classification import latency_metrics
from vlmexp.evaluation.usage import usage_fields, wall_seconds
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.tasks.base import Splits, Task, TrainingExample, Verdict

log = logging.getLogger(__name__)

#: Evaluated split -> the metric key of its exact match.
_EXACT_MATCH_KEYS = {"val": "exact_match", "test": "test_exact_match"}


class VQATask(Task):
    image_field = "image"
    main_metric = "exact_match"
    sample_unit = "questions"
    path_keys = ("train_file", "val_file", "test_file", "image_dir", "root")

    def __init__(self, name: str = "vqa", default_mode: str = "train_eval", trainer=None, evaluator=None, *,
                 description: str = "", system_prompt: str | None = None, max_new_tokens: int = 32):
        super().__init__(name, default_mode, trainer, evaluator, description)
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens

    # -- data -----------------------------------------------------------------------------------
    def load_splits(self, run) -> Splits:
        data, mode = run.cfg.data, run.mode
        fmt = data.format or "jsonl"
        reader = data_format(data, "jsonl")
        training, evaluating = "train" in mode, mode != "train"
        in_root = _files_in_root(data.get("root"), reader)
        if training and not (data.train_file or in_root.get("train")):
            raise ConfigError(f"mode={mode} needs data.train_file (a data.format={fmt} file)")
        if evaluating and not (data.val_file or data.test_file or in_root.get("val") or in_root.get("test")):
            raise ConfigError(f"mode={mode} needs data.val_file or data.test_file to evaluate on")
        files = {"train": (data.train_file or in_root.get("train")) if training else None,
                 "val": data.val_file or in_root.get("val"),
                 "test": (data.test_file or in_root.get("test")) if evaluating else None}
        image_dir = data.image_dir or in_root.get("image_dir")
        loaded, missing_images = {}, 0
        for split, path in files.items():
            if path:
                found = load_vqa_file(path, split, reader, image_dir)
                if not found.samples:
                    raise DataError(f"{path}: no question has an existing image" if found.missing_images
                                    else f"{path}: no questions (the file is empty)")
                missing_images += found.missing_images
                loaded[split] = found.samples
        evaluated = [s for split in ("val", "test") for s in loaded.get(split, [])[:data.limit]]
        return Splits(train=loaded.get("train"), val=loaded.get("val") if training else None,
                      test=evaluated if evaluating else None,
                      skipped={"skipped_missing_images": missing_images})

    def open(self, sample: VQASample):
        """The sample's image (UnreadableImage when it cannot be decoded: the caller skips and counts it)."""
        return open_image(sample.path)

    # -- requests -------------------------------------------------------------------------------
    def request(self, image, question: str) -> ChatRequest:
        return ChatRequest(chat(self.system_prompt, ImagePart(image), TextPart(question)),
                           max_new_tokens=self.max_new_tokens)

    def training_examples(self, samples: Sequence[VQASample]) -> list[TrainingExample]:
        def loader(sample: VQASample):
            return lambda: (self.request(self.open(sample), sample.question), sample.answer)

        return [TrainingExample(sample.id, loader(sample)) for sample in samples]

    # -- evaluation -----------------------------------------------------------------------------
    def predict(self, engine, samples: Sequence[VQASample]) -> list[dict]:
        records, requests, kept = [], [], []
        for sample in samples:
            try:
                image = self.open(sample)
            except UnreadableImage as exc:
                log.warning("skipping unreadable image %s", exc)
                records.append({"id": sample.id, "split": sample.split, "skipped": str(exc)})
                continue
            requests.append(self.request(image, sample.question))
            kept.append(sample)
        for sample, gen in zip(kept, engine.generate(requests) if requests else []):
            records.append({"id": sample.id, "split": sample.split, "image": str(sample.path),
                            "question": sample.question, "answer": sample.answer, "prediction": gen.text,
                            "correct": is_exact_match(gen.text, sample.answer), "latency_s": gen.latency_s,
                            "error": gen.error, **usage_fields(gen)})
        order = {sample.id: i for i, sample in enumerate(samples)}
        return sorted(records, key=lambda r: order[r["id"]])

    def epoch_metrics(self, engine, samples: Sequence[VQASample]) -> dict[str, float]:
        """Exact match of the model being trained on the validation samples (logged per epoch)."""
        answered = [r for r in self.predict(engine, samples) if not r.get("skipped")]
        return {"val_exact_match": _share_correct(answered)} if answered else {}

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        answered = [r for r in records if not r.get("skipped")]
        metrics: dict[str, float] = {}
        for split, key in _EXACT_MATCH_KEYS.items():
            rows = [r for r in answered if r["split"] == split]
            if rows:
                metrics[key] = _share_correct(rows)
                metrics[f"{split}_questions"] = float(len(rows))
        metrics["skipped_corrupt_images"] = float(sum(1 for r in records if r.get("skipped")))
        metrics["engine_errors"] = float(sum(1 for r in answered if r.get("error")))
        metrics.update(latency_metrics([r["latency_s"] for r in answered], wall_seconds(answered)))
        return metrics

    def verdict(self, record: dict) -> Verdict | None:
        if record.get("skipped"):
            return None
        return Verdict(record["prediction"].strip(), record["answer"],
                       is_exact_match(record["prediction"], record["answer"]))

    def resamplings(self, records: list[dict]) -> list:
        """Exact match of each split, resampled by question."""
        import numpy as np

        from vlmexp.evaluation.bootstrap import Resampling, weighted_mean

        answered = [r for r in records if not r.get("skipped")]
        correct = [float(is_exact_match(r["prediction"], r["answer"])) for r in answered]
        splits = {key: np.array([r["split"] == split for r in answered], float)
                  for split, key in _EXACT_MATCH_KEYS.items() if any(r["split"] == split for r in answered)}
        return [Resampling([r["id"] for r in answered],
                           lambda W, C: {key: weighted_mean(W * mask, correct) for key, mask in splits.items()})]

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        """``vqa_samples.csv``: every evaluated question with its answer and the model's prediction."""
        path = out_dir / "vqa_samples.csv"
        columns = ["split", "id", "image", "question", "answer", "prediction", "correct"]
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for record in records:
                if not record.get("skipped"):
                    writer.writerow(dict(record, correct=is_exact_match(record["prediction"], record["answer"])))
        return [path]

    def summary_keys(self) -> list[str]:
        return ["exact_match", "test_exact_match", "val_questions", "test_questions", "best_epoch",
                "skipped_missing_images", "skipped_corrupt_images", "latency_p50_s"]


def _files_in_root(root: str | None, reader) -> dict[str, Path]:
    """With ``data.root`` (an exported dataset such as task=annotate's): the split files the format names
    there (``train_llava.json`` / ``train.jsonl``, ...) that exist, and ``images/`` as the image folder."""
    if not root:
        return {}
    folder = Path(root).expanduser()
    pattern = getattr(reader, "file_name", None)  # a format's file name pattern, e.g. "{split}_llava.json"
    found = {split: folder / pattern.format(split=split) for split in ("train", "val", "test")} if pattern else {}
    found = {split: path for split, path in found.items() if path.is_file()}
    if (folder / "images").is_dir():
        found["image_dir"] = folder / "images"
    return found


def _share_correct(records: list[dict]) -> float:
    return sum(is_exact_match(r["prediction"], r["answer"]) for r in records) / len(records)
