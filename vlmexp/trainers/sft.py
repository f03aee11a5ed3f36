"""Supervised fine-tuning of a VLM on (request, answer) pairs, loss on the answer tokens only.

accelerate handles devices, mixed precision and data parallelism; peft handles LoRA/QLoRA.
Validation loss is computed every epoch (and every ``train.eval_every_steps`` if set); training
stops early after ``train.patience`` epochs without improvement, and the best weights are the ones
saved, restored and evaluated. An interrupted training resumes from its last epoch.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from vlmexp.errors import ConfigError
from vlmexp.trainers.features import build_features, collate
from vlmexp.trainers.modules import (
    count_parameters,
    language_linear_names,
    language_module,
    projector_module,
    set_trainable,
    vision_module,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object
    processor: object
    checkpoint_dir: Path
    best_epoch: int
    history: dict


class ExampleDataset:
    """Builds features lazily; an example whose image cannot be read yields None and is counted."""

    def __init__(self, examples, processor):
        self.examples, self.processor = examples, processor
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
        return build_features(self.processor, request, answer)


class EarlyStopping:
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


class SFTTrainer:
    def __init__(self, num_workers: int = 0):
        self.num_workers = num_workers

    # -- model preparation ------------------------------------------------------------------
    def prepare_model(self, run):
        from vlmexp.models.loading import load_model, load_processor, resolve_checkpoint

        train, placement = run.cfg.train, run.placement
        if train.lora.quant_bits and placement.device != "cuda":
            raise ConfigError(f"train.lora.quant_bits={train.lora.quant_bits}: QLoRA needs CUDA "
                              f"(bitsandbytes), not {placement.device}")
        checkpoint = resolve_checkpoint(run.cfg.model)
        processor = load_processor(checkpoint, run.cfg.model)
        if train.lora.quant_bits:
            placement = type(placement)(placement.device, placement.dtype, placement.attn_implementation,
                                        train.lora.quant_bits)
        model = load_model(checkpoint, run.cfg.model, placement, for_training=True)
        set_trainable(model, True)
        set_trainable(vision_module(model), not train.freeze_vision)
        set_trainable(projector_module(model), not train.freeze_projector)
        set_trainable(language_module(model)[1], not train.freeze_llm)
        if train.lora.enabled or train.lora.quant_bits:
            model = self._with_lora(model, train.lora)
        if train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model, processor

    @staticmethod
    def _with_lora(model, lora):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if lora.quant_bits:
            model = prepare_model_for_kbit_training(model)
        targets = lora.target_modules
        if targets in (None, "all-linear"):
            targets = language_linear_names(model)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=list(targets) if not isinstance(targets, str) else targets,
                            bias="none")
        return get_peft_model(model, config)

    # -- loop -----------------------------------------------------------------------------------
    def fit(self, run, task, splits) -> TrainResult:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_cosine_schedule_with_warmup

        cfg = run.cfg.train
        set_seed(run.cfg.seed)
        model, processor = self.prepare_model(run)
        trainable, total = count_parameters(model)
        run.tracker.log_metrics({"trainable_params": trainable, "total_params": total})
        log.info("trainable parameters: %s of %s", f"{trainable:,}", f"{total:,}")
        if trainable == 0:
            raise ConfigError("train.freeze_*: every parameter is frozen; nothing to train")

        pad_id = getattr(processor, "tokenizer", processor).pad_token_id
        train_set = ExampleDataset(task.training_examples(splits.train), processor)
        val_set = ExampleDataset(task.training_examples(splits.val), processor) if splits.val else None
        generator = torch.Generator().manual_seed(run.cfg.seed)
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True,
                                             generator=generator, num_workers=self.num_workers,
                                             collate_fn=lambda f: collate(f, pad_id))
        val_loader = (torch.utils.data.DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False,
                                                  collate_fn=lambda f: collate(f, pad_id)) if val_set else None)

        accelerator = Accelerator(mixed_precision=run.placement.mixed_precision,
                                  gradient_accumulation_steps=cfg.grad_accum,
                                  cpu=run.placement.device == "cpu")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = math.ceil(len(loader) / cfg.grad_accum)
        total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)

        state_dir, best_dir = run.work_dir / "train_state", run.work_dir / "checkpoint"
        stopper, history, start_epoch, step = EarlyStopping(cfg.patience), {"train": [], "val": []}, 1, 0
        if (state_dir / "progress.json").is_file():
            progress = json.loads((state_dir / "progress.json").read_text())
            accelerator.load_state(str(state_dir))
            start_epoch, step, history = progress["epoch"] + 1, progress["step"], progress["history"]
            stopper.best, stopper.best_epoch, stopper.bad = progress["best"], progress["best_epoch"], progress["bad"]
            log.info("resuming training after epoch %d (best val_loss %.4f at epoch %d)",
                     progress["epoch"], stopper.best, stopper.best_epoch)
        best_state = None

        def validate(epoch_point: float):
            loss = self._val_loss(model, val_loader, accelerator) if val_loader else history["train"][-1][1]
            return loss

        for epoch in range(start_epoch, cfg.epochs + 1):
            if stopper.should_stop or (cfg.max_steps and step >= cfg.max_steps):
                break
            model.train()
            bar = tqdm(loader, desc=f"train epoch {epoch}/{cfg.epochs}", unit="batch", dynamic_ncols=True)
            for batch in bar:
                if not batch:
                    continue
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if accelerator.sync_gradients:
                    step += 1
                    value = float(loss.detach())
                    history["train"].append((step / steps_per_epoch, value))
                    run.tracker.log_metrics({"train_loss": value, "lr": scheduler.get_last_lr()[0]}, step=step)
                    bar.set_postfix(loss=f"{value:.4f}")
                    if cfg.eval_every_steps and val_loader and step % cfg.eval_every_steps == 0:
                        run.tracker.log_metrics({"val_loss_steps": validate(step / steps_per_epoch)}, step=step)
                        model.train()
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            val_loss = validate(epoch)
            history["val"].append((epoch, val_loss))
            run.tracker.log_metrics({"val_loss": val_loss}, step=epoch)
            improved = stopper.update(epoch, val_loss)
            log.info("epoch %d: val_loss %.4f%s", epoch, val_loss, " (best)" if improved else "")
            if improved:
                best_state = self._save_best(accelerator, model, processor, best_dir)
            self._save_progress(accelerator, state_dir, epoch, step, history, stopper)

        unwrapped = accelerator.unwrap_model(model)
        if best_state is not None:
            unwrapped.load_state_dict(best_state, strict=False)
        elif best_dir.is_dir():  # resumed after the best epoch was already saved
            self._load_trainable(unwrapped, best_dir)
        run.tracker.log_metrics({"best_epoch": stopper.best_epoch, "best_val_loss": stopper.best,
                                 "skipped_corrupt_images_train": len(train_set.corrupt)})
        unwrapped.eval()
        return TrainResult(unwrapped, processor, best_dir, stopper.best_epoch, history)

    @staticmethod
    def _val_loss(model, loader, accelerator) -> float:
        import torch

        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in loader:
                if not batch:
                    continue
                tokens = int((batch["labels"] != -100).sum())
                loss = model(**batch).loss
                total += float(accelerator.gather_for_metrics(loss.detach() * tokens).sum())
                count += tokens
        return total / max(count, 1)

    @staticmethod
    def _save_best(accelerator, model, processor, best_dir: Path) -> dict:
        """Save weights (or the LoRA adapter) with the processor; keep the trainable tensors in memory."""
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            shutil.rmtree(best_dir, ignore_errors=True)
            unwrapped.save_pretrained(best_dir)
            processor.save_pretrained(best_dir)
        names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items() if k in names}

    @staticmethod
    def _load_trainable(model, best_dir: Path) -> None:
        from safetensors.torch import load_file

        files = sorted(best_dir.glob("*.safetensors"))
        state = {}
        for f in files:
            state.update(load_file(f))
        if hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, state)
        else:
            model.load_state_dict(state, strict=False)

    @staticmethod
    def _save_progress(accelerator, state_dir: Path, epoch: int, step: int, history: dict, stopper) -> None:
        accelerator.save_state(str(state_dir))
        if accelerator.is_main_process:
            (state_dir / "progress.json").write_text(json.dumps({
                "epoch": epoch, "step": step, "history": history, "best": stopper.best,
                "best_epoch": stopper.best_epoch, "bad": stopper.bad}))
