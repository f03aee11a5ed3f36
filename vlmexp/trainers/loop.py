"""The one training loop. Objectives (supervised fine-tuning, a classifier head) plug into it.

The loop owns what every training shares: data loaders (shuffled by a generator seeded per stage;
batches built in ``train.num_workers`` worker processes while the model trains, see
``vlmexp.trainers.batches``), AdamW over the trainable parameters with warmup and cosine decay,
accelerate (devices, mixed precision, data parallelism), gradient accumulation and clipping,
``train.max_steps``, validation after every epoch (and every ``train.eval_every_steps`` optimizer
steps), early stopping on the validation loss over all stages, the loss history, keeping and
restoring the best weights, and exact resume after a kill (for objectives that save their state).
An objective says what is trained and how: the model and its stages, the batches, the loss, the
validation loss, and how the best weights are kept and the result saved.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlmexp import distributed
from vlmexp.errors import VlmexpError
from vlmexp.tracking.names import logged
from vlmexp.trainers.batches import SkippedExamples, SkippingCollate, loader_workers
from vlmexp.trainers.stages import Stage

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object
    processor: object
    checkpoint_dir: Path
    best_epoch: int
    history: dict
    unreadable: set = field(default_factory=set)  # ids of examples whose image could not be read


@dataclass
class StageData:
    """What one stage trains on: datasets (items may be ``Unreadable``) and the collate of their readable
    items; ``in_memory`` data (extracted features) is read without worker processes."""

    train: Any
    val: Any
    collate: Any
    in_memory: bool = False


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


def stage_param(name: str, index: int) -> str:
    """The param a stage's constant is logged as: ``name`` for the first stage, ``name.stageN`` after."""
    return name if index == 0 else f"{name}.stage{index + 1}"


def optimizer_step(accelerator, loss, params, optimizer, scheduler, max_grad_norm: float | None) -> None:
    """Backward, clip (on the steps that update), step and reset; call inside ``accelerator.accumulate``."""
    accelerator.backward(loss)
    if accelerator.sync_gradients and max_grad_norm:
        accelerator.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


@dataclass
class Progress:
    """Where training stands; saved after every epoch by resumable objectives."""

    epoch: int = 0  # epochs finished, counted over all stages
    step: int = 0  # optimizer steps, over all stages
    history: dict = field(default_factory=lambda: {"train": [], "val": []})
    unreadable: set = field(default_factory=set)  # ids of examples whose image could not be read

    def to_dict(self, stopper: EarlyStopping) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "best": stopper.best,
                "best_epoch": stopper.best_epoch, "bad": stopper.bad, "corrupt": sorted(self.unreadable)}


class Objective(ABC):
    """A kind of training: what :class:`TrainingLoop` needs to know beyond the loop itself.
    ``fit(run, task, splits)`` runs the loop with this objective."""

    #: Whether the loop saves the state after every epoch and resumes from it after a kill.
    resumable: bool = False
    #: The structured config of ``train.*`` this trainer reads, and the ``trainer=`` option that gives it.
    settings: type | None = None
    settings_option: str | None = None

    def fit(self, run, task, splits) -> TrainResult:
        return TrainingLoop(run, self).fit(task, splits)

    # -- what is trained ------------------------------------------------------------------------
    @abstractmethod
    def setup(self, run, task, splits):
        """Load the model (seeded already) and the datasets; return the module the loop trains."""

    @abstractmethod
    def stages(self, run) -> list[Stage]:
        """The stages, each with its own ``train`` settings (one stage for most objectives)."""

    @abstractmethod
    def begin_stage(self, index: int, stage: Stage, accelerator) -> StageData:
        """Make the stage's parameters trainable (and no others); its data."""

    @abstractmethod
    def loss(self, model, batch):
        """The training loss of one batch (a scalar tensor)."""

    @abstractmethod
    def validation_loss(self, model, data: StageData, accelerator) -> float | None:
        """Mean loss over the stage's validation data; None when there is none (the loop then uses
        the epoch's mean training loss)."""

    def epoch_metrics(self, run, task, accelerator, model, splits) -> dict[str, float]:
        """Task metrics logged beside ``val_loss`` after each epoch (optional)."""
        return {}

    # -- best weights and results ---------------------------------------------------------------
    @abstractmethod
    def keep_best(self, accelerator) -> None:
        """The current weights are the best so far: keep them (to disk or in memory)."""

    @abstractmethod
    def restore_best(self) -> None:
        """Put the weights last kept by :meth:`keep_best` back into the model."""

    def unreadable(self) -> set[str]:
        """Ids of examples skipped so far because their image could not be read, beyond those of the
        training batches (the loop counts those)."""
        return set()

    @abstractmethod
    def finish(self, run, progress: Progress, stopper: EarlyStopping) -> TrainResult:
        """Save what training produced and describe it."""

    # -- resume: called only for objectives with ``resumable`` ----------------------------------
    def save_state(self, run, optimizer, scheduler, generator, progress: dict) -> None:
        """Write what :meth:`load_state` needs to continue after the epoch just finished."""
        raise TypeError(f"{type(self).__name__} sets resumable but does not define save_state")

    def load_state(self, run, optimizer, scheduler, generator) -> dict | None:
        """The progress saved by :meth:`save_state` (restoring the rest in place), or None."""
        raise TypeError(f"{type(self).__name__} sets resumable but does not define load_state")


class TrainingLoop:
    def __init__(self, run, objective: Objective):
        self.run, self.objective = run, objective
        self.skipped = SkippedExamples()  # unreadable training examples

    def fit(self, task, splits) -> TrainResult:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        run, objective = self.run, self.objective
        set_seed(run.cfg.seed)
        module = objective.setup(run, task, splits)
        stages = objective.stages(run)
        accelerator = Accelerator(mixed_precision=run.placement.mixed_precision,
                                  gradient_accumulation_steps=stages[0].train.grad_accum,
                                  cpu=run.placement.device == "cpu")
        stopper, progress = EarlyStopping(stages[0].train.patience), Progress()
        for index, stage in enumerate(stages):
            data = objective.begin_stage(index, stage, accelerator)
            self._run_stage(index, stage, data, module, accelerator, stopper, progress, task, splits)
        if stopper.best_epoch == 0:
            raise VlmexpError("training: no epoch gave a finite validation loss (NaN or inf, or no readable "
                              "image); check the data or lower train.lr")
        run.tracker.log_metrics(logged({"best_epoch": stopper.best_epoch, "best_val_loss": stopper.best,
                                        "skipped_corrupt_images": len(progress.unreadable)}))
        result = objective.finish(run, progress, stopper)
        result.unreadable = set(progress.unreadable)
        return result

    def _run_stage(self, index: int, stage: Stage, data: StageData, module, accelerator, stopper: EarlyStopping,
                   progress: Progress, task, splits) -> None:
        import torch
        from transformers import get_cosine_schedule_with_warmup

        run, objective, cfg = self.run, self.objective, stage.train
        accelerator.gradient_accumulation_steps = cfg.grad_accum
        generator = torch.Generator().manual_seed(run.cfg.seed + index)
        workers = loader_workers(0 if data.in_memory else cfg.num_workers, run.placement.device)
        # Workers are started for each epoch (not persistent): a new iterator draws its seed from the
        # generator, as without workers, so the shuffles, and a resumed run's, do not depend on them.
        loader = torch.utils.data.DataLoader(data.train, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                                             **workers,
                                             collate_fn=SkippingCollate(data.collate))
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Counted in optimizer steps (each process takes every N-th batch), given to the scheduler in its
        # own steps: accelerate steps a prepared scheduler once per process at every optimizer step.
        processes = accelerator.num_processes
        steps_per_epoch = max(1, math.ceil(math.ceil(len(loader) / processes) / cfg.grad_accum))
        total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
        scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps) * processes,
                                                    total_steps * processes)
        model, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)
        stopper.patience, stopper.bad = cfg.patience, 0
        effective = cfg.batch_size * accelerator.num_processes * cfg.grad_accum
        run.tracker.log_params({stage_param("train.effective_batch_size", index): effective})
        log.info("%s: %d examples per optimizer step (%d per process x %d processes x %d accumulated); batches "
                 "built in %d worker processes", stage.name, effective, cfg.batch_size, accelerator.num_processes,
                 cfg.grad_accum, workers["num_workers"])
        first_epoch, stage_steps = progress.epoch, 0
        saved = objective.load_state(run, optimizer, scheduler, generator) if objective.resumable else None
        if saved is not None:
            progress.epoch, progress.step, progress.history = saved["epoch"], saved["step"], saved["history"]
            progress.unreadable = set(saved.get("corrupt", []))
            stopper.best, stopper.best_epoch, stopper.bad = saved["best"], saved["best_epoch"], saved["bad"]
            stage_steps = progress.step
            log.info("resuming training after epoch %d (best val_loss %.4f at epoch %d)",
                     progress.epoch, stopper.best, stopper.best_epoch)
        epoch_losses: list[float] = []

        def validate(log_step: int, suffix: str = "") -> float:
            loss = objective.validation_loss(model, data, accelerator)
            if loss is None:  # no validation set: the epoch's mean training loss
                loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else math.inf
            metrics = {f"val_loss{suffix}": loss}
            metrics.update({f"{k}{suffix}": v for k, v in
                            objective.epoch_metrics(run, task, accelerator, accelerator.unwrap_model(model),
                                                    splits).items()})
            run.tracker.log_metrics(logged(metrics, "val"), step=log_step)
            model.train()
            return loss

        last = first_epoch + cfg.epochs
        while progress.epoch < last:
            if stopper.should_stop or (cfg.max_steps and stage_steps >= cfg.max_steps):
                break
            epoch = progress.epoch + 1
            model.train()
            epoch_losses = []
            bar = tqdm(loader, desc=f"{stage.name} epoch {epoch}/{last}", unit="batch", dynamic_ncols=True)
            for batch in self.skipped.batches(bar):
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler then moves on)
                with accelerator.accumulate(model):
                    loss = objective.loss(model, batch)
                    optimizer_step(accelerator, loss, params, optimizer, scheduler, cfg.max_grad_norm)
                if accelerator.sync_gradients:
                    progress.step += 1
                    stage_steps += 1
                    value = float(accelerator.reduce(loss.detach(), "mean"))  # over the processes
                    epoch_losses.append(value)
                    progress.history["train"].append((epoch - 1 + min(1.0, len(epoch_losses) / steps_per_epoch),
                                                      value))
                    run.tracker.log_metrics(logged({"train_loss": value, "lr": lr}), step=progress.step)
                    bar.set_postfix(loss=f"{value:.4f}")
                    if cfg.eval_every_steps and progress.step % cfg.eval_every_steps == 0:
                        validate(progress.step, suffix="_step")
                if cfg.max_steps and stage_steps >= cfg.max_steps:
                    break
            # decided once, by the main process: every process stops and keeps the same epoch
            val_loss = distributed.broadcast(validate(epoch))
            progress.history["val"].append((epoch, val_loss))
            improved = stopper.update(epoch, val_loss)
            log.info("epoch %d (%s): val_loss %.4f%s", epoch, stage.name, val_loss, " (best)" if improved else "")
            if improved:
                objective.keep_best(accelerator)
            progress.epoch = epoch
            progress.unreadable |= self.skipped.ids | objective.unreadable()
            if objective.resumable and accelerator.is_main_process:
                objective.save_state(run, optimizer, scheduler, generator, progress.to_dict(stopper))
            accelerator.wait_for_everyone()
        if stopper.best_epoch and stopper.best_epoch != progress.epoch:
            log.info("restoring the best weights (epoch %d)", stopper.best_epoch)
            objective.restore_best()
        accelerator.free_memory()
