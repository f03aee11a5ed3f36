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
from vlmexp.errors import ConfigError, DataError
from vlmexp.provenance import dataset_fingerprint
from vlmexp.trainers.modules import (
    count_parameters,
    language_linear_names,
    language_module,
    projector_module,
    set_trainable,
    vision_module,
)
from vlmexp.trainers.sft import EarlyStopping, TrainResult, optimizer_step
from vlmexp.trainers.stages import Stage, resolve_stages

log = logging.getLogger(__name__)

SUMMARY_FILE = "training.json"


class ExampleSet:
    """(request, class index) per training example; None, counted, where the image cannot be read."""

    def __init__(self, examples, class_names: Sequence[str]):
        self.examples = examples
        self.index = {name: i for i, name in enumerate(class_names)}
        self.unreadable: set[str] = set()

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        from vlmexp.data.images import UnreadableImage

        example = self.examples[i]
        try:
            request, answer = example.load()
        except UnreadableImage:
            self.unreadable.add(example.id)
            return None
        if answer not in self.index:
            raise DataError(f"training example {example.id}: answer {answer!r} is not a class ({list(self.index)})")
        return request, self.index[answer]


class ClassifierTrainer:
    def __init__(self, class_weights: Sequence[float] | None = None, num_workers: int = 0):
        self.class_weights = list(class_weights) if class_weights is not None else None
        self.num_workers = num_workers

    # -- entry point ----------------------------------------------------------------------------
    def fit(self, run, task, splits) -> TrainResult:
        stages = resolve_stages(run.cfg.train)
        if self.class_weights is not None and (len(self.class_weights) != len(task.class_names)
                                               or min(self.class_weights) <= 0):
            raise ConfigError(f"task.trainer.class_weights={self.class_weights}: expected "
                              f"{len(task.class_names)} positive numbers, one per class {task.class_names}")
        if not splits.train or not splits.val:
            raise ConfigError("the classifier trainer needs training and validation samples")
        if run.placement.quantization and any(s.backbone == "full" for s in stages):
            raise ConfigError(f"hardware.quantization={run.placement.quantization}: a quantised backbone cannot be "
                              "fine-tuned fully; use a frozen or lora stage")
        checkpoint = run.work_dir / "checkpoint"
        data = dataset_fingerprint({"train": splits.train, "val": splits.val})
        summary = checkpoint / SUMMARY_FILE
        if summary.is_file() and json.loads(summary.read_text()).get("data") == data:
            return self._reuse(run, checkpoint)
        return self._train(run, task, splits, stages, checkpoint, data)

    def _train(self, run, task, splits, stages: list[Stage], checkpoint: Path, data: str) -> TrainResult:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from vlmexp.models.classifier import Classifier, VLMClassifier, backbone_spec
        from vlmexp.models.loading import load_model, load_processor, resolve_checkpoint

        set_seed(run.cfg.seed)
        source = resolve_checkpoint(run.cfg.model)
        processor = load_processor(source, run.cfg.model)
        backbone = load_model(source, run.cfg.model, run.placement, for_training=True)
        module = VLMClassifier(backbone, task.head, len(task.class_names))
        classifier = Classifier(module, processor, task.class_names, backbone_spec(run.cfg.model, source))
        train_set = ExampleSet(task.training_examples(splits.train), task.class_names)
        val_set = ExampleSet(task.training_examples(splits.val), task.class_names)
        accelerator = Accelerator(mixed_precision=run.placement.mixed_precision, cpu=run.placement.device == "cpu")
        weights = (torch.tensor(self.class_weights, dtype=torch.float32, device=accelerator.device)
                   if self.class_weights else None)
        loop = _Loop(run, accelerator, module, weights)
        features = None  # pooled features of (train, val), valid while the backbone does not change
        backbone_changed = False
        for index, stage in enumerate(stages):
            if hasattr(module.backbone, "peft_config") and stage.backbone != "lora":
                module.backbone = module.backbone.merge_and_unload()  # later stages build on the adapted weights
                backbone_changed = True
            _configure_backbone(module, stage)
            trainable, total = count_parameters(module)
            run.tracker.log_metrics({"trainable_params": trainable, "total_params": total}, step=index + 1)
            log.info("stage %d (%s, backbone %s): %s of %s parameters trainable", index + 1, stage.name,
                     stage.backbone, f"{trainable:,}", f"{total:,}")
            if stage.backbone == "frozen":
                if features is None:
                    features = tuple(self._extract(accelerator, module, processor, split, stage.train.batch_size)
                                     for split in (train_set, val_set))
                train_data, val_data, collate = features[0], features[1], _stack_features
            else:
                features = None
                backbone_changed = backbone_changed or stage.backbone == "full"
                train_data, val_data, collate = train_set, val_set, _RequestCollator(processor)
            loop.run_stage(index, stage, train_data, val_data, collate, self.num_workers)
        module.eval()
        changed = backbone_changed and any(s.backbone != "frozen" for s in stages[:loop.best_stage + 1])
        classifier.save(checkpoint, backbone_changed=changed)
        unreadable = len(train_set.unreadable | val_set.unreadable)
        summary = {"data": data, "best_epoch": loop.stopper.best_epoch, "best_val_loss": loop.stopper.best,
                   "history": loop.history, "trainable_params": trainable, "total_params": total,
                   "stages": [{"name": s.name, "backbone": s.backbone} for s in stages]}
        write_text_atomic(checkpoint / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        run.tracker.log_metrics({"best_epoch": loop.stopper.best_epoch, "best_val_loss": loop.stopper.best,
                                 "skipped_corrupt_images": unreadable})
        return TrainResult(classifier, processor, checkpoint, loop.stopper.best_epoch, loop.history)

    def _reuse(self, run, checkpoint: Path) -> TrainResult:
        from vlmexp.models.classifier import load_classifier

        summary = json.loads((checkpoint / SUMMARY_FILE).read_text())
        log.info("reusing the finished training in %s (best epoch %d)", checkpoint, summary["best_epoch"])
        hw = run.cfg.hardware
        classifier = load_classifier(checkpoint, hw.device, hw.precision, hw.attn_implementation)
        for epoch, loss in summary["history"]["val"]:
            run.tracker.log_metrics({"val_loss": loss}, step=int(epoch))
        run.tracker.log_metrics({"best_epoch": summary["best_epoch"], "best_val_loss": summary["best_val_loss"],
                                 "trainable_params": summary["trainable_params"],
                                 "total_params": summary["total_params"]})
        return TrainResult(classifier, classifier.processor, checkpoint, summary["best_epoch"], summary["history"])

    @staticmethod
    def _extract(accelerator, module, processor, data: ExampleSet, batch_size: int):
        """Pooled backbone features and labels of every readable example (the backbone is frozen)."""
        import torch
        from accelerate.utils import send_to_device

        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                             collate_fn=_RequestCollator(processor))
        accelerator.prepare_model(module, evaluation_mode=True)  # device placement only
        module.eval()
        feats, labels = [], []
        with torch.no_grad(), accelerator.autocast():
            for batch in tqdm(loader, desc="backbone features", unit="batch", dynamic_ncols=True):
                if not batch:
                    continue
                batch = send_to_device(batch, accelerator.device)
                labels.append(batch.pop("labels").cpu())
                feats.append(module.features(**batch).float().cpu())
        if not feats:
            raise DataError("no readable images to extract features from")
        return torch.utils.data.TensorDataset(torch.cat(feats), torch.cat(labels))


def _configure_backbone(module, stage: Stage) -> None:
    """Which backbone parameters the stage trains; the head always trains."""
    from vlmexp.models.classifier import unwrap_peft

    set_trainable(module.head, True)
    if stage.backbone == "frozen":
        set_trainable(module.backbone, False)
    elif stage.backbone == "full":
        backbone, train = module.backbone, stage.train
        set_trainable(backbone, True)
        set_trainable(vision_module(backbone), not train.freeze_vision)
        set_trainable(projector_module(backbone), not train.freeze_projector)
        set_trainable(language_module(backbone)[1], not train.freeze_llm)
    else:
        if not hasattr(module.backbone, "peft_config"):
            module.backbone = _with_lora(module.backbone, stage.train.lora)
        for name, param in module.backbone.named_parameters():
            param.requires_grad_("lora_" in name)
    if stage.train.gradient_checkpointing and stage.backbone != "frozen":
        unwrap_peft(module.backbone).gradient_checkpointing_enable()


def _with_lora(backbone, lora):
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if targets in (None, "all-linear"):
        targets = language_linear_names(backbone)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=targets if isinstance(targets, str) else list(targets))
    return get_peft_model(backbone, config)


class _RequestCollator:
    """Encodes a batch of (request, label) with the processor; drops unreadable (None) items."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items) -> dict:
        import torch

        from vlmexp.models.classifier import encode

        items = [item for item in items if item is not None]
        if not items:
            return {}
        batch = dict(encode(self.processor, [request for request, _ in items]))
        batch["labels"] = torch.tensor([label for _, label in items])
        return batch


def _stack_features(items) -> dict:
    import torch

    return {"features": torch.stack([f for f, _ in items]), "labels": torch.stack([y for _, y in items])}


class _Loop:
    """The epochs of every stage, with one early-stopping state and history across stages."""

    def __init__(self, run, accelerator, module, weights):
        self.run, self.accelerator, self.module, self.weights = run, accelerator, module, weights
        self.stopper = EarlyStopping(1)
        self.history: dict[str, list] = {"train": [], "val": []}
        self.epoch = 0  # counted across stages
        self.best_stage = 0

    def _loss(self, logits, labels, reduction: str = "mean"):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), labels, weight=self.weights, reduction=reduction)

    def run_stage(self, index: int, stage: Stage, train_data, val_data, collate, num_workers: int) -> None:
        import torch
        from transformers import get_cosine_schedule_with_warmup

        cfg, accelerator, module = stage.train, self.accelerator, self.module
        accelerator.gradient_accumulation_steps = cfg.grad_accum
        loader = torch.utils.data.DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(self.run.cfg.seed + index),
                                             num_workers=num_workers, collate_fn=collate)
        val_loader = torch.utils.data.DataLoader(val_data, batch_size=cfg.batch_size, shuffle=False,
                                                 collate_fn=collate)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
        total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
        model, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
        self.stopper.patience, self.stopper.bad = cfg.patience, 0
        best = _snapshot(module)  # the best weights so far are the current ones
        stage_steps = 0
        for _ in range(cfg.epochs):
            if self.stopper.should_stop or (cfg.max_steps and stage_steps >= cfg.max_steps):
                break
            self.epoch += 1
            epoch_losses = []
            model.train()
            bar = tqdm(loader, desc=f"{stage.name} epoch {self.epoch}", unit="batch", dynamic_ncols=True)
            for i, batch in enumerate(bar):
                if not batch:
                    continue
                with accelerator.accumulate(model):
                    labels = batch.pop("labels")
                    loss = self._loss(model(**batch), labels)
                    optimizer_step(accelerator, loss, params, optimizer, scheduler, cfg.max_grad_norm)
                if accelerator.sync_gradients:
                    stage_steps += 1
                    value = float(loss.detach())
                    epoch_losses.append(value)
                    self.history["train"].append((self.epoch - 1 + (i + 1) / len(loader), value))
                    bar.set_postfix(loss=f"{value:.4f}")
                if cfg.max_steps and stage_steps >= cfg.max_steps:
                    break
            val_loss = self._val_loss(val_loader)
            self.history["val"].append((self.epoch, val_loss))
            # Per epoch, not per step: a head on cached features takes milliseconds a step.
            self.run.tracker.log_metrics({"val_loss": val_loss, "lr": scheduler.get_last_lr()[0],
                                          "train_loss": sum(epoch_losses) / max(len(epoch_losses), 1)},
                                         step=self.epoch)
            improved = self.stopper.update(self.epoch, val_loss)
            log.info("epoch %d (%s): val_loss %.4f%s", self.epoch, stage.name, val_loss, " (best)" if improved else "")
            if improved:
                best, self.best_stage = _snapshot(module), index
        _restore(module, best)
        accelerator.free_memory()

    def _val_loss(self, loader) -> float:
        """Mean (class-weighted) cross-entropy over the validation samples; every process sees all of them."""
        import torch
        from accelerate.utils import send_to_device

        self.module.eval()
        total, weight = 0.0, 0.0
        with torch.no_grad(), self.accelerator.autocast():
            for batch in loader:
                if not batch:
                    continue
                batch = send_to_device(batch, self.accelerator.device)
                labels = batch.pop("labels")
                total += float(self._loss(self.module(**batch), labels, reduction="sum"))
                weight += float(self.weights[labels].sum()) if self.weights is not None else len(labels)
        return total / weight if weight else math.inf


def _snapshot(module) -> dict:
    return {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters() if p.requires_grad}


def _restore(module, state: dict) -> None:
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in state:
                param.copy_(state[name])
