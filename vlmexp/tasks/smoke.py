"""Early-fire smoke detection (the Early-Fire benchmark): JSON answers with a box per image."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vlmexp.data.images import UnreadableImage, open_image
from vlmexp.data.smoke import SmokeFrame, load_smoke_dataset
from vlmexp.errors import ConfigError
from vlmexp.evaluation.classification import binary_metrics, latency_metrics
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat
from vlmexp.tasks.base import Splits, Task, TrainingExample
from vlmexp.tasks.smoke_contract import RESPONSE_SCHEMA, format_smoke_answer, parse_smoke_answer

log = logging.getLogger(__name__)


class SmokeTask(Task):
    def __init__(self, name: str = "smoke", default_mode: str = "eval", trainer=None, evaluator=None, *,
                 system_prompt: str, user_prompt: str, smoke_classes: Sequence[int] = (0,),
                 bad_json: str = "negative", iou_threshold: float = 0.4, max_new_tokens: int = 64):
        super().__init__(name, default_mode, trainer, evaluator)
        if bad_json not in ("negative", "discard"):
            raise ConfigError(f"task.bad_json={bad_json}: expected 'negative' or 'discard'")
        self.system_prompt = system_prompt
        self.user_prompt = user_prompt
        self.smoke_classes = list(smoke_classes)
        self.bad_json = bad_json
        self.iou_threshold = iou_threshold
        self.max_new_tokens = max_new_tokens

    # -- data -----------------------------------------------------------------------------------
    def load_splits(self, run) -> Splits:
        data, mode = run.cfg.data, run.mode
        roots = {"train": data.train_root, "val": data.val_root, "test": data.root}
        if data.root is None:
            from vlmexp.data.synthetic_smoke import generate_smoke_dataset

            generated = generate_smoke_dataset(run.cfg.paths.cache_dir, **(data.synthetic or {}))
            roots = {"train": data.train_root or generated["train"], "val": data.val_root or generated["val"],
                     "test": generated["test"]}
            log.info("no data.root given: using the generated smoke dataset in %s", Path(roots["test"]).parent)
        training = "train" in mode
        if training and not roots["train"]:
            raise ConfigError(f"mode={mode} needs data.train_root (a folder in data.format={data.format})")

        def load(root, limit=None):
            if not root:
                return None
            return load_smoke_dataset(root, data.format or "sequences", self.smoke_classes, data.frame_stride, limit)

        return Splits(train=load(roots["train"]) if training else None,
                      val=load(roots["val"]) if training else None,
                      test=load(roots["test"], data.limit) if mode != "train" else None)

    # -- requests -------------------------------------------------------------------------------
    def request(self, image) -> ChatRequest:
        return ChatRequest(chat(self.system_prompt, ImagePart(image), TextPart(self.user_prompt)),
                           response_schema=RESPONSE_SCHEMA, max_new_tokens=self.max_new_tokens)

    def training_examples(self, samples: Sequence[SmokeFrame]) -> list[TrainingExample]:
        def loader(frame: SmokeFrame):
            return lambda: (self.request(open_image(frame.path)), format_smoke_answer(frame.boxes))

        return [TrainingExample(frame.id, loader(frame)) for frame in samples]

    # -- evaluation -----------------------------------------------------------------------------
    def predict(self, engine, samples: Sequence[SmokeFrame]) -> list[dict]:
        records, requests, kept = [], [], []
        for frame in samples:
            try:
                image = open_image(frame.path)
            except UnreadableImage as exc:
                log.warning("skipping unreadable image %s", exc)
                records.append({"id": frame.id, "skipped": str(exc)})
                continue
            requests.append(self.request(image))
            kept.append((frame, image.size))
        for (frame, size), gen in zip(kept, engine.generate(requests) if requests else []):
            sent = gen.image_sizes[0] if gen.image_sizes else size
            answer = parse_smoke_answer(gen.text, sent)
            records.append({
                "id": frame.id, "sequence": frame.sequence, "frame": frame.index, "time_s": frame.time_s,
                "width": size[0], "height": size[1], "truth": frame.has_smoke, "true_boxes": frame.boxes,
                "parse_ok": answer.parse_ok and gen.error is None, "pred": answer.has_smoke,
                "pred_box": answer.boxes[0] if answer.boxes else None, "raw": gen.text,
                "latency_s": gen.latency_s, "error": gen.error,
            })
        order = {frame.id: i for i, frame in enumerate(samples)}
        return sorted(records, key=lambda r: order[r["id"]])

    def scored(self, records: list[dict]) -> list[dict]:
        """The evaluated records that count, with BAD_JSON handled as configured."""
        evaluated = [r for r in records if not r.get("skipped")]
        if self.bad_json == "discard":
            return [r for r in evaluated if r["parse_ok"]]
        return [dict(r, pred=r["pred"] if r["parse_ok"] else False) for r in evaluated]

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        evaluated = [r for r in records if not r.get("skipped")]
        scored = self.scored(records)
        metrics = binary_metrics([r["truth"] for r in scored], [r["pred"] for r in scored])
        metrics.update({
            "parse_success_rate": sum(r["parse_ok"] for r in evaluated) / len(evaluated) if evaluated else 0.0,
            "skipped_images": float(len(records) - len(evaluated)),
            "num_images": float(len(evaluated)),
            "engine_errors": float(sum(1 for r in evaluated if r.get("error"))),
        })
        metrics.update(latency_metrics([r["latency_s"] for r in evaluated]))
        return metrics

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        from vlmexp.plots import confusion_matrix_png

        scored = self.scored(records)
        if not scored:
            return []
        label = {True: "smoke", False: "no smoke"}
        return [confusion_matrix_png([label[r["truth"]] for r in scored], [label[r["pred"]] for r in scored],
                                     ["no smoke", "smoke"], out_dir / "confusion_matrix.png", "smoke (image level)")]

    def summary_keys(self) -> list[str]:
        return ["accuracy", "precision", "recall", "f1", "false_positive_rate", "parse_success_rate",
                "num_images", "skipped_images", "latency_p50_s"]
