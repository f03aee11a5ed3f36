"""Binary classification of (image, text) pairs with a classifier head on a VLM backbone (seed 001).

Training (``task.trainer``: :class:`vlmexp.trainers.classifier.ClassifierTrainer`) fits the head, and
optionally the backbone, in stages. Evaluation scores the class names through the engine protocol:
the trained classifier after training, a saved one with ``task.checkpoint``, or, with neither, the
configured generative engine zero-shot (the log-probability of each class name as the answer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from vlmexp.config.validate import check_target_keys
from vlmexp.data.binary import BinarySample
from vlmexp.data.formats import data_format
from vlmexp.data.images import UnreadableImage, open_image
from vlmexp.data.jsonl import MissingImages
from vlmexp.errors import ConfigError
from vlmexp.models.classifier_spec import HeadConfig, classification_request
from vlmexp.tasks.base import Splits, Task, TrainingExample, Verdict

log = logging.getLogger(__name__)


class BinaryTask(Task):
    image_field = "image_path"
    main_metric = "accuracy"
    path_keys = ("train_file", "val_file", "test_file")

    def __init__(self, name: str = "binary", default_mode: str = "train_eval", trainer=None, evaluator=None, *,
                 description: str = "",
                 class_names: Sequence[str] = ("0", "1"), head=None, checkpoint: str | None = None,
                 batch_size: int = 16, classifier_engine=None):
        super().__init__(name, default_mode, trainer, evaluator, description)
        # The engine that serves a trained classifier (``_target_``), built by the run's engine factory.
        self.classifier_engine = classifier_engine or {"_target_": "vlmexp.engines.classifier.ClassifierEngine"}
        self.class_names = [str(c) for c in class_names]
        self.head_values = head
        self.checkpoint = str(Path(checkpoint).expanduser()) if checkpoint else None
        self.batch_size = batch_size
        self.head = HeadConfig()
        self.warned: set[str] = set()  # ids of unreadable images already named in the log

    def check_config(self) -> None:
        """Config errors as one line (raised here, not in the constructor, which Hydra wraps)."""
        if self.trainer is not None:
            check_target_keys(self.trainer, "task.trainer")
        if len(self.class_names) != 2 or len(set(self.class_names)) != 2:
            raise ConfigError(f"task.class_names={self.class_names}: expected two different names (labels 0, 1)")
        self.head = HeadConfig.from_mapping(self.head_values)
        if self.checkpoint and not (Path(self.checkpoint) / "head_config.json").is_file():
            raise ConfigError(f"task.checkpoint={self.checkpoint}: not a saved classifier folder (no head_config.json)")
        if self.batch_size < 1:
            raise ConfigError(f"task.batch_size={self.batch_size}: must be >= 1")

    # -- data -----------------------------------------------------------------------------------
    def load_splits(self, run) -> Splits:
        self.check_config()
        data, mode = run.cfg.data, run.mode
        reader = data_format(data, "jsonl")
        files = {"train": data.train_file, "val": data.val_file, "test": data.test_file}
        if not any(files.values()):
            from vlmexp.data.synthetic_binary import generate_binary_dataset

            files = generate_binary_dataset(run.cfg.paths.cache_dir, **(data.synthetic or {}))
            log.info("no data files given: using the generated two-class set in %s", Path(files["test"]).parent)
        training = "train" in mode
        if training and not (files["train"] and files["val"]):
            raise ConfigError(f"mode={mode} needs data.train_file and data.val_file (JSONL lines with "
                              "image_path, text, label)")
        if mode != "train" and not (files["test"] or files["val"]):
            raise ConfigError(f"mode={mode} needs data.test_file (or data.val_file) to evaluate on")
        if self.checkpoint and mode == "eval":
            self._check_checkpoint_model(run.cfg.model.name)
        missing = MissingImages()
        train = reader.read(files["train"], "train", missing) if training else None
        val = reader.read(files["val"], "val", missing) if training else None
        test = None
        if mode != "train":
            if files["test"]:
                test = reader.read(files["test"], "test", missing, data.limit)
            else:
                test = val[:data.limit] if val is not None else reader.read(files["val"], "val", missing,
                                                                                  data.limit)
        return Splits(train=train, val=val, test=test, skipped={"skipped_missing_images": missing.count})

    def _check_checkpoint_model(self, model_name: str) -> None:
        import json

        saved = json.loads((Path(self.checkpoint) / "head_config.json").read_text())["backbone"]["name"]
        if saved != model_name:
            raise ConfigError(f"task.checkpoint={self.checkpoint}: trained on model={saved}, but model={model_name} "
                              "is selected")

    def _open(self, sample: BinarySample):
        try:
            return open_image(sample.path)
        except UnreadableImage:
            if sample.id not in self.warned:
                log.warning("%s: unreadable image %s; skipping the sample", sample.source, sample.path)
            self.warned.add(sample.id)
            raise

    def training_examples(self, samples: Sequence[BinarySample]) -> list[TrainingExample]:
        def loader(sample: BinarySample):
            return lambda: (classification_request(self._open(sample), sample.text), self.class_names[sample.label])

        return [TrainingExample(s.id, loader(s)) for s in samples]

    # -- evaluation -----------------------------------------------------------------------------
    def evaluation_engine(self, run, trained=None):
        from omegaconf import OmegaConf

        node = OmegaConf.create(dict(self.classifier_engine, batch_size=self.batch_size))
        if trained is not None:
            if self.checkpoint:
                log.warning("task.checkpoint=%s is ignored: evaluating the classifier just trained", self.checkpoint)
            return run.build_engine(node, classifier=trained.model)
        if self.checkpoint:
            from vlmexp.models.classifier import load_classifier

            hw = run.cfg.hardware
            return run.build_engine(node, classifier=load_classifier(self.checkpoint, hw.device, hw.precision,
                                                                     hw.attn_implementation))
        from hydra.utils import get_class

        if not get_class(run.cfg.engine._target_).supports_scoring:
            raise ConfigError(f"task=binary with no task.checkpoint scores the class names zero-shot, and "
                              f"engine._target_={run.cfg.engine._target_} cannot score; use engine=hf")
        log.info("no task.checkpoint: zero-shot, scoring the class names %s as answers", self.class_names)
        return super().evaluation_engine(run)

    def predict(self, engine, samples: Sequence[BinarySample]) -> list[dict]:
        import numpy as np

        records, requests, kept = [], [], []
        for sample in samples:
            try:
                image = self._open(sample)
            except UnreadableImage as exc:
                records.append({"id": sample.id, "source": sample.source, "skipped": str(exc)})
                continue
            requests.append(classification_request(image, sample.text))
            kept.append(sample)
        if requests:
            scores = np.asarray(engine.score(requests, self.class_names), dtype=float)
            probs = np.exp(scores - scores.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            for sample, p in zip(kept, probs):
                records.append({"id": sample.id, "source": sample.source, "image_path": str(sample.path),
                                "text": sample.text, "truth": sample.label, "pred": int(p.argmax()),
                                "prob": float(p[1]), "probs": p.tolist()})
        order = {s.id: i for i, s in enumerate(samples)}
        return sorted(records, key=lambda r: order[r["id"]])

    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score

        from vlmexp.evaluation.classification import binary_metrics

        scored = [r for r in records if not r.get("skipped")]
        truth = [r["truth"] for r in scored]
        metrics = binary_metrics([t == 1 for t in truth], [r["pred"] == 1 for r in scored])
        if len(set(truth)) == 2:
            metrics["roc_auc"] = float(roc_auc_score(truth, [r["prob"] for r in scored]))
        elif scored:
            log.warning("roc_auc is undefined: the evaluated samples are all of one class")
        metrics.update({"num_samples": float(len(scored)),
                        "skipped_corrupt_images": float(sum(1 for r in records if r.get("skipped")))})
        return metrics

    def verdict(self, record: dict) -> Verdict | None:
        if record.get("skipped"):
            return None
        names = self.class_names
        return Verdict(names[record["pred"]], names[record["truth"]], record["pred"] == record["truth"])

    def resamplings(self, records: list[dict]) -> list:
        """accuracy, f1 and roc_auc (where both classes are present), resampled by sample."""
        from vlmexp.evaluation.bootstrap import Resampling, binary_rates, roc_auc

        scored = [r for r in records if not r.get("skipped")]
        truth, pred = [r["truth"] == 1 for r in scored], [r["pred"] == 1 for r in scored]
        prob, both = [r["prob"] for r in scored], len(set(truth)) == 2

        def statistic(W, C):
            rates = binary_rates(W, truth, pred)
            values = {"accuracy": rates["accuracy"], "f1": rates["f1"]}
            if both:
                values["roc_auc"] = roc_auc(W, truth, prob)
            return values

        return [Resampling([r["id"] for r in scored], statistic)]

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        from vlmexp.plots import confusion_matrix_png, roc_curve_png

        scored = [r for r in records if not r.get("skipped")]
        if not scored:
            return []
        names = self.class_names
        paths = [confusion_matrix_png([names[r["truth"]] for r in scored], [names[r["pred"]] for r in scored], names,
                                      out_dir / "confusion_matrix.png", f"{self.name}: confusion matrix")]
        if "roc_auc" in metrics:
            paths.append(roc_curve_png([r["truth"] for r in scored], [r["prob"] for r in scored],
                                       out_dir / "roc_curve.png", f"{self.name}: ROC (positive class {names[1]})"))
        return paths

    def summary_keys(self) -> list[str]:
        return ["accuracy", "precision", "recall", "f1", "roc_auc", "num_samples", "skipped_missing_images",
                "skipped_corrupt_images", "best_epoch"]
