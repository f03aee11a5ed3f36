"""Training a classifier head on a VLM backbone, in stages (seed 001).

The stages come from ``train.stages`` (:mod:`vlmexp.trainers.stages`). With the backbone
frozen, its pooled features are computed once and the head trains on them (same result, one
backbone pass instead of one per epoch). Cross-entropy with optional class weights; validation loss
every epoch; early stopping across stages: a stage that never beats the best validation loss so far
leaves the weights of the best epoch, which are what is saved and evaluated.

Works with any task that provides ``class_names``, ``head`` (a ``HeadConfig``) and
``training_examples`` whose answers are class names. accelerate handles devices, mixed precision
and data parallelism; peft handles LoRA. A finished training found in the run's work folder (same
config and dataset fingerprints) is reused; an interrupted one starts over.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from vlmexp.atomic import write_text_atomic
from vlmexp.config.schema import ClassifierTrainConfig
from vlmexp.errors import ConfigError, DataError
from vlmexp.models.adapters import model_adapter
from vlmexp.provenance import dataset_fingerprint
from vlmexp.tracking.names import logged
from vlmexp.trainers.batches import SkippedExamples, SkippingCollate, TrainingExamples, loader_workers
from vlmexp.trainers.loop import EarlyStopping, Objective, Progress, StageData, TrainResult, stage_param
from vlmexp.trainers.modules import count_parameters, freeze_parts, set_trainable, with_lora
from vlmexp.trainers.protocols import ClassifierTask, require
from vlmexp.trainers.stages import Stage, resolve_stages

log = logging.getLogger(__name__)

SUMMARY_FILE = "training.json"


class ClassIndex:
    """(request, answer) -> (request, the answer's class index); DataError for an answer that is no class."""

    def __init__(self, class_names: Sequence[str]):
        self.index = {name: i for i, name in enumerate(class_names)}

    def __call__(self, request, answer: str):
        if answer not in self.index:
            raise DataError(f"answer {answer!r} is not a class ({list(self.index)})")
        return request, self.index[answer]


class ClassifierTrainer(Objective):
    settings = ClassifierTrainConfig
    settings_option = "classifier"

    def __init__(self, class_weights: Sequence[float] | None = None):
        self.class_weights = list(class_weights) if class_weights is not None else None

    # -- entry point ----------------------------------------------------------------------------
    def fit(self, run, task, splits) -> TrainResult:
        require(task, ClassifierTask, type(self).__name__)
        self._stages = resolve_stages(run.cfg.train)
        if self.class_weights is not None and (len(self.class_weights) != len(task.class_names)
                                               or min(self.class_weights) <= 0):
            raise ConfigError(f"task.trainer.class_weights={self.class_weights}: expected "
                              f"{len(task.class_names)} positive numbers, one per class {task.class_names}")
        if not splits.train or not splits.val:
            raise ConfigError("the classifier trainer needs training and validation samples")
        if run.placement.quantization and any(s.backbone == "full" for s in self._stages):
            raise ConfigError(f"hardware.quantization={run.placement.quantization}: a quantised backbone cannot be "
                              "fine-tuned fully; use a frozen or lora stage")
        checkpoint = run.work_dir / "checkpoint"
        self.data_fingerprint = dataset_fingerprint({"train": splits.train, "val": splits.val})
        summary = checkpoint / SUMMARY_FILE
        if summary.is_file() and json.loads(summary.read_text()).get("data") == self.data_fingerprint:
            return self._reuse(run, checkpoint)
        return super().fit(run, task, splits)

    # -- the objective --------------------------------------------------------------------------
    def setup(self, run, task, splits):
        from vlmexp.models.classifier import Classifier, VLMClassifier, backbone_spec
        from vlmexp.models.loading import resolve_checkpoint

        self.adapter = model_adapter(run.cfg.model)
        source = resolve_checkpoint(run.cfg.model)
        self.processor = self.adapter.load_processor(source, run.cfg.model)
        backbone = self.adapter.load_model(source, run.cfg.model, run.placement, for_training=True)
        self.module = VLMClassifier(backbone, task.head, len(task.class_names))
        self.classifier = Classifier(self.module, self.processor, task.class_names,
                                     backbone_spec(run.cfg.model, source), self.adapter)
        to_class = ClassIndex(task.class_names)
        self.train_set = TrainingExamples(task.training_examples(splits.train), to_class)
        self.val_set = TrainingExamples(task.training_examples(splits.val), to_class)
        self.skipped = SkippedExamples()  # unreadable examples met outside the loop's training batches
        self.run, self.weights = run, None
        self.features = None  # pooled features of (train, val), valid while the backbone does not change
        self.backbone_changed, self.best_stage, self.stage_index = False, 0, 0
        return self.module

    def stages(self, run) -> list[Stage]:
        return self._stages

    def begin_stage(self, index: int, stage: Stage, accelerator) -> StageData:
        import torch

        module, self.stage_index, self.accelerator = self.module, index, accelerator
        if self.weights is None and self.class_weights:
            self.weights = torch.tensor(self.class_weights, dtype=torch.float32, device=accelerator.device)
        if hasattr(module.backbone, "peft_config") and stage.backbone != "lora":
            module.backbone = module.backbone.merge_and_unload()  # later stages build on the adapted weights
            self.backbone_changed = True
        _configure_backbone(module, stage, self.adapter)
        self.trainable, self.total = count_parameters(module)
        self.run.tracker.log_params({stage_param("model.trainable_params", index): self.trainable,
                                     stage_param("model.total_params", index): self.total})
        log.info("stage %d (%s, backbone %s): %s of %s parameters trainable", index + 1, stage.name,
                 stage.backbone, f"{self.trainable:,}", f"{self.total:,}")
        self.best = _snapshot(module)  # the best weights so far are the current ones
        if stage.backbone == "frozen":
            if self.features is None:
                self.features = tuple(self._extract(accelerator, split, stage.train)
                                      for split in (self.train_set, self.val_set))
            return StageData(self.features[0], self.features[1], _stack_features, in_memory=True)
        self.features = None
        self.backbone_changed = self.backbone_changed or stage.backbone == "full"
        return StageData(self.train_set, self.val_set, _RequestCollator(self.processor, self.adapter))

    def _loss(self, logits, labels, reduction: str = "mean"):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels, weight=self.weights, reduction=reduction)

    def loss(self, model, batch):
        labels = batch.pop("labels")
        return self._loss(model(**batch), labels)

    def validation_loss(self, model, data: StageData, accelerator) -> float:
        """Mean (class-weighted) cross-entropy over the validation samples; every process sees all of them."""
        import torch
        from accelerate.utils import send_to_device

        train = self._stages[self.stage_index].train
        loader = torch.utils.data.DataLoader(data.val, batch_size=train.batch_size, shuffle=False,
                                             **loader_workers(0 if data.in_memory else train.num_workers,
                                                              accelerator.device.type),
                                             collate_fn=SkippingCollate(data.collate))
        self.module.eval()
        total, weight = 0.0, 0.0
        with torch.no_grad(), accelerator.autocast():
            for batch in self.skipped.batches(loader):
                batch = send_to_device(batch, accelerator.device)
                labels = batch.pop("labels")
                total += float(self._loss(self.module(**batch), labels, reduction="sum"))
                weight += float(self.weights[labels].sum()) if self.weights is not None else len(labels)
        return total / weight if weight else math.inf

    def keep_best(self, accelerator) -> None:
        self.best, self.best_stage = _snapshot(self.module), self.stage_index

    def restore_best(self) -> None:
        _restore(self.module, self.best)

    def unreadable(self) -> set[str]:
        return set(self.skipped.ids)

    def finish(self, run, progress: Progress, stopper: EarlyStopping) -> TrainResult:
        self.module.eval()
        stages, checkpoint = self._stages, run.work_dir / "checkpoint"
        changed = self.backbone_changed and any(s.backbone != "frozen" for s in stages[:self.best_stage + 1])
        if self.accelerator.is_main_process:  # one checkpoint, written by the main process
            self.classifier.save(checkpoint, backbone_changed=changed)
            summary = {"data": self.data_fingerprint, "best_epoch": stopper.best_epoch,
                       "best_val_loss": stopper.best, "history": progress.history, "trainable_params": self.trainable,
                       "total_params": self.total, "stages": [{"name": s.name, "backbone": s.backbone} for s in stages]}
            write_text_atomic(checkpoint / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        self.accelerator.wait_for_everyone()
        return TrainResult(self.classifier, self.processor, checkpoint, stopper.best_epoch, progress.history)

    def _reuse(self, run, checkpoint: Path) -> TrainResult:
        from vlmexp.models.classifier import load_classifier

        summary = json.loads((checkpoint / SUMMARY_FILE).read_text())
        log.info("reusing the finished training in %s (best epoch %d)", checkpoint, summary["best_epoch"])
        hw = run.cfg.hardware
        classifier = load_classifier(checkpoint, hw.device, hw.precision, hw.attn_implementation)
        for epoch, loss in summary["history"]["val"]:
            run.tracker.log_metrics(logged({"val_loss": loss}), step=int(epoch))
        best = {"best_epoch": summary["best_epoch"], "best_val_loss": summary["best_val_loss"]}
        run.tracker.log_metrics(logged(best))
        run.tracker.log_params({"model.trainable_params": summary["trainable_params"],
                                "model.total_params": summary["total_params"]})
        return TrainResult(classifier, classifier.processor, checkpoint, summary["best_epoch"], summary["history"])

    def _extract(self, accelerator, data: TrainingExamples, train):
        """Pooled backbone features and labels of every readable example (the backbone is frozen)."""
        import torch
        from accelerate.utils import send_to_device

        module, classifier = self.module, self.classifier
        loader = torch.utils.data.DataLoader(
            data, batch_size=train.batch_size, shuffle=False,
            **loader_workers(train.num_workers, accelerator.device.type),
            collate_fn=SkippingCollate(_RequestCollator(classifier.processor, classifier.adapter)))
        # Device placement only: accelerator.prepare_model here would register the module, and the loop's
        # prepare then leaves it without DDP (the processes' gradients never averaged). A quantised
        # backbone was placed when loaded.
        quantised = getattr(module.backbone, "hf_quantizer", None) is not None
        (module.head if quantised else module).to(accelerator.device)
        module.eval()
        feats, labels = [], []
        with torch.no_grad(), accelerator.autocast():
            for batch in self.skipped.batches(tqdm(loader, desc="backbone features", unit="batch",
                                                   dynamic_ncols=True)):
                batch = send_to_device(batch, accelerator.device)
                labels.append(batch.pop("labels").cpu())
                feats.append(module.features(**batch).float().cpu())
        if not feats:
            raise DataError("no readable images to extract features from")
        return torch.utils.data.TensorDataset(torch.cat(feats), torch.cat(labels))


def _configure_backbone(module, stage: Stage, adapter) -> None:
    """Which backbone parameters the stage trains; the head always trains."""
    from vlmexp.models.classifier import unwrap_peft

    set_trainable(module.head, True)
    if stage.backbone == "frozen":
        set_trainable(module.backbone, False)
    elif stage.backbone == "full":
        backbone, train = module.backbone, stage.train
        freeze_parts(backbone, adapter.parts(backbone), vision=train.freeze_vision,
                     projector=train.freeze_projector, language=train.freeze_llm)
    else:
        if not hasattr(module.backbone, "peft_config"):
            module.backbone = with_lora(module.backbone, adapter.parts(module.backbone), stage.train.lora)
        for name, param in module.backbone.named_parameters():
            param.requires_grad_("lora_" in name)
    if stage.train.gradient_checkpointing and stage.backbone != "frozen":
        unwrap_peft(module.backbone).gradient_checkpointing_enable()


class _RequestCollator:
    """Encodes a batch of (request, label) through the model's adapter."""

    def __init__(self, processor, adapter):
        self.processor, self.adapter = processor, adapter

    def __call__(self, items) -> dict:
        import torch

        from vlmexp.models.classifier import encode

        batch = dict(encode(self.processor, [request for request, _ in items], self.adapter))
        batch["labels"] = torch.tensor([label for _, label in items])
        return batch


def _stack_features(items) -> dict:
    import torch

    return {"features": torch.stack([f for f, _ in items]), "labels": torch.stack([y for _, y in items])}


def _snapshot(module) -> dict:
    return {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters() if p.requires_grad}


def _restore(module, state: dict) -> None:
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in state:
                param.copy_(state[name])
