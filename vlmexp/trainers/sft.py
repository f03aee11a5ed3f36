"""Supervised fine-tuning of a VLM on (request, answer) pairs, loss on the answer tokens only.

The objective of :class:`~vlmexp.trainers.loop.TrainingLoop` for generative models: the model's
adapter builds the inputs and answer-only labels, peft adds LoRA/QLoRA. After every epoch the loop
computes the validation loss and, when the task provides ``epoch_metrics`` (``EpochMetricsTask``), the
task's generation metrics through the run's engine over the model being trained. The best epoch's
weights are saved with the processor, restored at the end and returned for evaluation; a rerun of the
same config resumes after the last finished epoch.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import partial
from pathlib import Path

from vlmexp.config.schema import SFTTrainConfig
from vlmexp.errors import ConfigError
from vlmexp.models.adapters import model_adapter
from vlmexp.trainers.batches import SkippedExamples, SkippingCollate, TrainingExamples, loader_workers
from vlmexp.trainers.loop import EarlyStopping, Objective, Progress, StageData, TrainResult, optimizer_step
from vlmexp.trainers.modules import count_parameters, freeze_parts, unfrozen_parts, with_lora
from vlmexp.trainers.protocols import EpochMetricsTask, SupervisedTask, require
from vlmexp.trainers.stages import Stage
from vlmexp.trainers.state import is_peft, load_train_state, restore_best, save_best, save_train_state

log = logging.getLogger(__name__)

__all__ = ["EarlyStopping", "SFTTrainer", "TrainResult", "optimizer_step"]


def check_quantization(train_cfg, device: str) -> None:
    bits = train_cfg.lora.quant_bits
    if bits is None:
        return
    if bits not in (4, 8):
        raise ConfigError(f"train.lora.quant_bits={bits}: expected 4 (QLoRA), 8 or null")
    if device != "cuda":
        raise ConfigError(f"train.lora.quant_bits={bits}: QLoRA needs a CUDA GPU (bitsandbytes), not {device}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"train.lora.quant_bits={bits}: install bitsandbytes (pip install bitsandbytes)")


class SFTTrainer(Objective):
    resumable = True
    settings = SFTTrainConfig
    settings_option = "sft"

    # -- model preparation ------------------------------------------------------------------
    def prepare_model(self, run):
        from vlmexp.models.loading import resolve_checkpoint

        train, placement = run.cfg.train, run.placement
        adapter = model_adapter(run.cfg.model)
        adapter.check_trainable(run.cfg.model)
        check_quantization(train, placement.device)
        lora = train.lora.enabled or train.lora.quant_bits is not None
        if placement.quantization and not lora:
            raise ConfigError(f"hardware.quantization={placement.quantization}: quantised weights cannot be "
                              "fine-tuned directly; train a LoRA adapter on them (train.lora.quant_bits="
                              f"{placement.quantization})")
        if lora and train.freeze_llm and train.lora.target_modules in (None, "all-linear"):
            raise ConfigError("train.freeze_llm=true with LoRA: the default LoRA targets are the language "
                              "model's linear layers; name other train.lora.target_modules or unfreeze it")
        checkpoint = resolve_checkpoint(run.cfg.model)
        processor = adapter.load_processor(checkpoint, run.cfg.model)
        if train.lora.quant_bits:
            placement = type(placement)(placement.device, placement.dtype, placement.attn_implementation,
                                        train.lora.quant_bits)
        model = adapter.load_model(checkpoint, run.cfg.model, placement, for_training=True)
        parts = adapter.parts(model)
        freeze_parts(model, parts, vision=train.freeze_vision, projector=train.freeze_projector,
                     language=train.freeze_llm)
        if train.gradient_checkpointing and not train.lora.quant_bits:
            adapter.enable_gradient_checkpointing(model)
        if lora:
            full = unfrozen_parts(parts, vision=train.freeze_vision, projector=train.freeze_projector)
            model = with_lora(model, parts, train.lora, train_in_full=full,
                              gradient_checkpointing=train.gradient_checkpointing)
        return model, processor, adapter

    # -- the objective --------------------------------------------------------------------------
    def setup(self, run, task, splits):
        require(task, SupervisedTask, type(self).__name__)
        self.run = run
        self.model, self.processor, self.adapter = self.prepare_model(run)
        model = self.model
        trainable, total = (model.get_nb_trainable_parameters() if is_peft(model) else count_parameters(model))
        run.tracker.log_params({"model.trainable_params": trainable, "model.total_params": total})
        log.info("trainable parameters: %s of %s", f"{trainable:,}", f"{total:,}")
        if trainable == 0:
            raise ConfigError("train.freeze_*: every parameter is frozen; nothing to train")
        features = partial(self.adapter.supervised_features, self.processor)  # built where the example is read
        self.train_set = TrainingExamples(task.training_examples(splits.train), features)
        self.val_set = TrainingExamples(task.training_examples(splits.val), features) if splits.val else None
        self.val_skipped = SkippedExamples()
        self.best_dir, self.state_dir = run.work_dir / "checkpoint", run.work_dir / "train_state"
        return model

    def stages(self, run) -> list[Stage]:
        return [Stage("train", "full", run.cfg.train)]

    def _collate(self):
        pad_id = getattr(self.processor, "tokenizer", self.processor).pad_token_id
        return partial(self.adapter.collate, pad_token_id=pad_id)

    def begin_stage(self, index: int, stage: Stage, accelerator) -> StageData:
        import torch

        self.accelerator = accelerator
        self.val_loader = None
        if self.val_set is not None:
            loader = torch.utils.data.DataLoader(self.val_set, batch_size=stage.train.batch_size, shuffle=False,
                                                 **loader_workers(stage.train.num_workers, accelerator.device.type),
                                                 collate_fn=SkippingCollate(self._collate()))
            self.val_loader = accelerator.prepare(loader)
        return StageData(self.train_set, self.val_set, self._collate())

    def loss(self, model, batch):
        """Mean loss per answer token of the batch; over the processes' batches together when there are
        several (DDP averages their gradients, so each process's mean is weighted by its share of the
        tokens): the same gradient as one process with the whole batch."""
        loss = self.adapter.forward(model, batch).loss
        processes = self.accelerator.num_processes
        if processes == 1:
            return loss
        tokens = (batch["labels"][:, 1:] != -100).sum().float()
        return loss * tokens * processes / self.accelerator.reduce(tokens.detach().clone(), "sum")

    def validation_loss(self, model, data: StageData, accelerator) -> float | None:
        if self.val_loader is None:
            return None
        return self._val_loss(model, self.val_skipped.batches(self.val_loader), accelerator, self.adapter)

    def epoch_metrics(self, run, task, accelerator, model, splits) -> dict[str, float]:
        """The task's own validation metrics (e.g. exact match of generated answers), if it has any."""
        metrics: dict[str, float] = {}
        if isinstance(task, EpochMetricsTask) and splits.val and accelerator.is_main_process:
            model.eval()
            engine = run.build_engine(model=model, processor=self.processor)
            with accelerator.autocast():
                metrics = task.epoch_metrics(engine, splits.val)
        accelerator.wait_for_everyone()
        return metrics

    def keep_best(self, accelerator) -> None:
        if accelerator.is_main_process:
            save_best(self.model, self.processor, self.best_dir)

    def restore_best(self) -> None:
        log.info("restoring the best weights from %s", self.best_dir)
        restore_best(self.model, self.best_dir)

    def unreadable(self) -> set[str]:
        return set(self.val_skipped.ids)

    def save_state(self, run, optimizer, scheduler, generator, progress: dict) -> None:
        save_train_state(self.state_dir, self.model, optimizer, scheduler, generator, progress)

    def load_state(self, run, optimizer, scheduler, generator) -> dict | None:
        return load_train_state(self.state_dir, self.model, optimizer, scheduler, generator)

    def finish(self, run, progress: Progress, stopper: EarlyStopping) -> TrainResult:
        self.model.eval()
        return TrainResult(self.model, self.processor, Path(self.best_dir), stopper.best_epoch, progress.history)

    @staticmethod
    def _val_loss(model, batches, accelerator, adapter) -> float:
        """Mean loss per answer token over the validation batches."""
        import torch

        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                loss = adapter.forward(model, batch).loss
                total += float(accelerator.gather_for_metrics((loss.detach() * tokens).reshape(1)).sum())
                count += int(accelerator.gather_for_metrics(torch.tensor([tokens], device=loss.device)).sum())
        return total / max(count, 1)
