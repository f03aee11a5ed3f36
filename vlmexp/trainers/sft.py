"""Supervised fine-tuning of a VLM on (request, answer) pairs, loss on the answer tokens only.

accelerate handles devices, mixed precision, gradient accumulation and data parallelism; peft
handles LoRA/QLoRA. After every epoch (and every ``train.eval_every_steps`` optimizer steps if set)
the trainer computes the validation loss and, when the task defines
``epoch_metrics(engine, samples)``, the task's generation metrics through the configured in-process
engine over the model being trained. Training stops early after ``train.patience`` epochs without a
lower validation loss; the best epoch's weights are saved with the processor, restored at the end and
returned for evaluation. A rerun of the same config resumes after the last finished epoch.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from vlmexp.errors import ConfigError, VlmexpError
from vlmexp.models.adapters import ModelParts, model_adapter
from vlmexp.trainers.modules import count_parameters, freeze_parts, language_linear_names
from vlmexp.trainers.protocols import EpochMetricsTask, SupervisedTask, require
from vlmexp.trainers.state import is_peft, load_train_state, restore_best, save_best, save_train_state

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    model: object
    processor: object
    checkpoint_dir: Path
    best_epoch: int
    history: dict


class ExampleDataset:
    """Builds features lazily; an example whose image cannot be read yields None (``collate`` leaves
    it out) and its id is added to ``corrupt``, in the process that reads it (num_workers=0: this one)."""

    def __init__(self, examples, processor, adapter):
        self.examples, self.processor, self.adapter = examples, processor, adapter
        self.corrupt: set[str] = set()

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        from vlmexp.data.images import UnreadableImage

        example = self.examples[i]
        try:
            request, answer = example.load()
        except UnreadableImage as exc:
            if example.id not in self.corrupt:
                log.warning("skipping unreadable training image: %s", exc)
            self.corrupt.add(example.id)
            return None
        return self.adapter.supervised_features(self.processor, request, answer)


class EarlyStopping:
    """Tracks the lowest validation loss; stops after ``patience`` epochs without a new lowest."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.bad = patience, math.inf, 0, 0

    def update(self, epoch: int, loss: float) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if loss < self.best:
            self.best, self.best_epoch, self.bad = loss, epoch, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad >= self.patience


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


def optimizer_step(accelerator, loss, params, optimizer, scheduler, max_grad_norm: float | None) -> None:
    """Backward, clip (on the steps that update), step and reset; call inside ``accelerator.accumulate``."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


class SFTTrainer:
    def __init__(self, num_workers: int = 0):
        self.num_workers = num_workers

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
            # the transformers 5 name; older 5.x releases only have the gradient_checkpointing_ one
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        if lora:
            model = self._with_lora(model, parts, train)
        return model, processor, adapter

    @staticmethod
    def _with_lora(model, parts: ModelParts, train):
        """Adapters on the target layers; a vision encoder or projector left unfrozen trains in full."""
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        lora = train.lora
        if lora.quant_bits:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=train.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
        targets = lora.target_modules
        if targets in (None, "all-linear"):
            targets = language_linear_names(model, parts)
        full = []
        vision, projector = ModelParts.name(parts.vision), ModelParts.name(parts.projector)
        if vision and not train.freeze_vision:
            full.append(vision)
        if projector and not train.freeze_projector and not any(projector.startswith(f + ".") for f in full):
            full.append(projector)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=targets if isinstance(targets, str) else list(targets),
                            modules_to_save=full or None, bias="none")
        return get_peft_model(model, config)

    # -- loop -----------------------------------------------------------------------------------
    def fit(self, run, task, splits) -> TrainResult:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        cfg = run.cfg.train
        require(task, SupervisedTask, type(self).__name__)
        set_seed(run.cfg.seed)
        model, processor, adapter = self.prepare_model(run)
        trainable, total = (model.get_nb_trainable_parameters() if is_peft(model) else count_parameters(model))
        run.tracker.log_metrics({"trainable_params": trainable, "total_params": total})
        log.info("trainable parameters: %s of %s", f"{trainable:,}", f"{total:,}")
        if trainable == 0:
            raise ConfigError("train.freeze_*: every parameter is frozen; nothing to train")

        pad_id = getattr(processor, "tokenizer", processor).pad_token_id
        train_set = ExampleDataset(task.training_examples(splits.train), processor, adapter)
        val_set = ExampleDataset(task.training_examples(splits.val), processor, adapter) if splits.val else None
        generator = torch.Generator().manual_seed(run.cfg.seed)
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                                             generator=generator, num_workers=self.num_workers,
                                             collate_fn=partial(adapter.collate, pad_token_id=pad_id))
        val_loader = (torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False,
                                                  collate_fn=partial(adapter.collate, pad_token_id=pad_id))
                      if val_set else None)

        accelerator = Accelerator(mixed_precision=run.placement.mixed_precision,
                                  gradient_accumulation_steps=cfg.grad_accum,
                                  cpu=run.placement.device == "cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total_steps = cfg.max_steps or math.ceil(len(loader) / cfg.grad_accum) * cfg.epochs
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)
        steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
        unwrapped = accelerator.unwrap_model(model)

        state_dir, best_dir = run.work_dir / "train_state", run.work_dir / "checkpoint"
        stopper, history, epoch_done, step = EarlyStopping(cfg.patience), {"train": [], "val": []}, 0, 0
        epoch_losses: list[float] = []
        corrupt: set[str] = set()  # ids of examples whose image could not be read, over all epochs
        progress = load_train_state(state_dir, unwrapped, optimizer, scheduler, generator)
        if progress is not None:
            epoch_done, step, history = progress["epoch"], progress["step"], progress["history"]
            corrupt = set(progress.get("corrupt", []))
            stopper.best, stopper.best_epoch, stopper.bad = progress["best"], progress["best_epoch"], progress["bad"]
            log.info("resuming training after epoch %d (best val_loss %.4f at epoch %d)",
                     epoch_done, stopper.best, stopper.best_epoch)

        def validate(log_step: int, suffix: str = "") -> float:
            """The validation loss (without a validation set: the epoch's mean training loss)."""
            if val_loader is not None:
                loss = self._val_loss(model, val_loader, accelerator)
            else:
                loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else math.inf
            metrics = {f"val_loss{suffix}": loss}
            metrics.update({f"{k}{suffix}": v for k, v in
                            self._task_metrics(run, task, accelerator, unwrapped, processor, splits.val).items()})
            run.tracker.log_metrics(metrics, step=log_step)
            model.train()
            return loss

        for epoch in range(epoch_done + 1, cfg.epochs + 1):
            if stopper.should_stop or (cfg.max_steps and step >= cfg.max_steps):
                break
            model.train()
            epoch_losses = []
            bar = tqdm(loader, desc=f"train epoch {epoch}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
            for batch in bar:
                if not batch:  # every image of the batch was unreadable
                    continue
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    optimizer_step(accelerator, loss, params, optimizer, scheduler, cfg.max_grad_norm)
                if accelerator.sync_gradients:
                    step += 1
                    value = float(loss.detach())
                    epoch_losses.append(value)
                    history["train"].append((epoch - 1 + min(1.0, len(epoch_losses) / steps_per_epoch), value))
                    run.tracker.log_metrics({"train_loss": value, "lr": scheduler.get_last_lr()[0]}, step=step)
                    bar.set_postfix(loss=f"{value:.4f}")
                    if cfg.eval_every_steps and step % cfg.eval_every_steps == 0:
                        validate(step, suffix="_step")
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            val_loss = validate(epoch)
            history["val"].append((epoch, val_loss))
            improved = stopper.update(epoch, val_loss)
            log.info("epoch %d: val_loss %.4f%s", epoch, val_loss, " (best)" if improved else "")
            if improved and accelerator.is_main_process:
                save_best(unwrapped, processor, best_dir)
            epoch_done = epoch
            corrupt |= train_set.corrupt | (val_set.corrupt if val_set else set())
            if accelerator.is_main_process:
                save_train_state(state_dir, unwrapped, optimizer, scheduler, generator, {
                    "epoch": epoch, "step": step, "history": history, "best": stopper.best,
                    "best_epoch": stopper.best_epoch, "bad": stopper.bad, "corrupt": sorted(corrupt)})
            accelerator.wait_for_everyone()

        if stopper.best_epoch == 0:
            raise VlmexpError("training: no epoch gave a finite validation loss (NaN or inf, or no readable "
                              "image); check the data or lower train.lr")
        if stopper.best_epoch != epoch_done:
            log.info("restoring the best weights (epoch %d) from %s", stopper.best_epoch, best_dir)
            restore_best(unwrapped, best_dir)
        run.tracker.log_metrics({"best_epoch": stopper.best_epoch, "best_val_loss": stopper.best,
                                 "skipped_corrupt_images": len(corrupt)})
        unwrapped.eval()
        return TrainResult(unwrapped, processor, best_dir, stopper.best_epoch, history)

    @staticmethod
    def _task_metrics(run, task, accelerator, model, processor, samples) -> dict[str, float]:
        """The task's own validation metrics (e.g. exact match of generated answers), if it has any."""
        metrics: dict[str, float] = {}
        if isinstance(task, EpochMetricsTask) and samples and accelerator.is_main_process:
            model.eval()
            engine = run.build_engine(model=model, processor=processor)
            with accelerator.autocast():
                metrics = task.epoch_metrics(engine, samples)
        accelerator.wait_for_everyone()
        return metrics

    @staticmethod
    def _val_loss(model, loader, accelerator) -> float:
        """Mean loss per answer token over the validation set."""
        import torch

        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                if not batch:
                    continue
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                loss = model(**batch).loss
                total += float(accelerator.gather_for_metrics((loss.detach() * tokens).reshape(1)).sum())
                count += int(accelerator.gather_for_metrics(torch.tensor([tokens], device=loss.device)).sum())
        return total / max(count, 1)
