"""The SFT trainer on the tiny model: early stopping on seed 004's loss curve, best weights restored
(full fine-tuning and LoRA, in the same process and in a rerun after training finished), resume."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import compose_config
from tests.vqa_helpers import write_split
from vlmexp.runner import RunContext, run
from vlmexp.tracking.null import NullTracker
from vlmexp.trainers.sft import EarlyStopping, SFTTrainer

# Seed 004's validation loss per epoch: lowest at epoch 2, then overfitting.
SEED_004_VAL_LOSS = [1.7609, 1.7252, 1.7986, 1.9750, 2.0121]
LORA = ["train.lora.enabled=true", "train.lora.r=4", "train.lora.alpha=8", "train.lora.dropout=0.0"]


def test_early_stopping_on_seed_004_curve():
    stopper = EarlyStopping(patience=2)
    improved = []
    for epoch, loss in enumerate(SEED_004_VAL_LOSS, start=1):
        improved.append(stopper.update(epoch, loss))
        if stopper.should_stop:
            break
    assert improved == [True, True, False, False]
    assert (stopper.best_epoch, stopper.best) == (2, 1.7252)


@pytest.fixture(scope="module")
def small_vqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa-small")
    return write_split(root, "train", 4, seed=1), write_split(root, "val", 2, seed=2)


def _config(cache_dir, small_vqa, *extra):
    train, val = small_vqa
    return compose_config(["task=vqa", "model=tiny", "hardware=cpu", f"paths.cache_dir={cache_dir}",
                           f"data.train_file={train}", f"data.val_file={val}", "train.batch_size=4",
                           "task.max_new_tokens=4", *extra])


class ScriptedLossTrainer(SFTTrainer):
    """The real trainer, with the validation loss read from a script instead of computed; it keeps a
    copy of the trainable weights each time it validates."""

    def __init__(self, curve):
        super().__init__()
        self.curve, self.snapshots = list(curve), []

    def _val_loss(self, model, loader, accelerator, adapter):
        weights = accelerator.unwrap_model(model).named_parameters()
        self.snapshots.append({n: p.detach().clone() for n, p in weights if p.requires_grad})
        return self.curve[len(self.snapshots) - 1]


def _fit(trainer, cfg, work_dir):
    task = instantiate(cfg.task, _recursive_=False)
    ctx = RunContext(cfg, work_dir / "output", work_dir, NullTracker(), "test")
    return trainer.fit(ctx, task, task.load_splits(ctx))


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_trainer_ends_on_best_epoch_weights_and_reloads_them_after_finishing(tmp_path, cache_dir, tiny_checkpoint,
                                                                              small_vqa, adapter):
    cfg = _config(cache_dir, small_vqa, "train.epochs=5", "train.patience=2", "train.lr=1e-2",
                  *(LORA if adapter == "lora" else []))
    trainer = ScriptedLossTrainer(SEED_004_VAL_LOSS)
    result = _fit(trainer, cfg, tmp_path)
    assert result.best_epoch == 2
    assert [tuple(point) for point in result.history["val"]] == list(zip(range(1, 5), SEED_004_VAL_LOSS[:4]))
    assert len(trainer.snapshots) == 4  # stopped after two epochs without improvement
    best, last, final = trainer.snapshots[1], trainer.snapshots[3], _trainable(result.model)
    assert set(final) == set(best)
    assert any(not torch.equal(best[n], last[n]) for n in best)  # the weights did move after epoch 2
    assert all(torch.equal(final[n], best[n]) for n in best)
    saved = {p.name for p in result.checkpoint_dir.iterdir()}
    assert "processor_config.json" in saved and "tokenizer.json" in saved
    assert ("adapter_model.safetensors" if adapter == "lora" else "model.safetensors") in saved

    # Rerunning the finished training trains nothing and loads the best epoch's weights back.
    again = ScriptedLossTrainer([])
    rerun = _fit(again, cfg, tmp_path)
    assert again.snapshots == [] and rerun.best_epoch == 2
    reloaded = _trainable(rerun.model)
    assert all(torch.equal(reloaded[n], best[n]) for n in best)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_interrupted_training_resumes_after_last_epoch_as_if_never_stopped(tmp_path, tiny_checkpoint, small_vqa,
                                                                            adapter):
    from safetensors.torch import load_file

    # LoRA's batches are built in a worker process: the resumed shuffles must not depend on it
    extra = ["mode=train", "train.epochs=3", "train.lr=5e-3",
             *([*LORA, "train.num_workers=1"] if adapter == "lora" else ["train.num_workers=0"])]
    reference = tmp_path / "reference"
    run(_config(reference, small_vqa, *extra))
    interrupted = tmp_path / "interrupted"
    ctrl_c = ["logger._target_=tests.vqa_helpers.InterruptingTracker", "+logger.metric=val/loss", "+logger.step=2"]
    with pytest.raises(KeyboardInterrupt):
        run(_config(interrupted, small_vqa, *extra, *ctrl_c))
    (state,) = (interrupted / "runs" / "vqa").glob("*/train_state/progress.json")
    assert json.loads(state.read_text())["epoch"] == 1
    run(_config(interrupted, small_vqa, *extra))

    def finished(cache):
        (work,) = (cache / "runs" / "vqa").iterdir()
        progress = json.loads((work / "train_state" / "progress.json").read_text())
        return progress, load_file(work / "train_state" / "trainable.safetensors")

    (want, want_weights), (got, got_weights) = finished(reference), finished(interrupted)
    assert got["epoch"] == want["epoch"] == 3
    assert got["step"] == want["step"] == 6
    for curve in ("train", "val"):
        (got_x, got_y), (want_x, want_y) = zip(*got["history"][curve]), zip(*want["history"][curve])
        assert got_x == want_x
        assert got_y == pytest.approx(want_y, rel=1e-5)
    assert set(got_weights) == set(want_weights)
    assert all(torch.allclose(got_weights[n], want_weights[n], atol=1e-6) for n in want_weights)
