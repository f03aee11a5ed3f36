"""Checkpoints of a fine-tuning run: the best weights (for users) and the resume state (for reruns).

The best checkpoint is ``save_pretrained`` output with the processor: a LoRA adapter, or the full
model. The resume state holds only what changes during training (trainable tensors, optimizer,
scheduler, random generators, progress), so a LoRA run never rewrites the frozen base weights.
Both are written into a temporary folder and swapped in, so a kill mid-write leaves the previous one.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from vlmexp.atomic import fsync_dir, fsync_tree, write_text_atomic
from vlmexp.errors import VlmexpError


def _swap_in(target: Path, write: Callable[[Path], None]) -> None:
    """Write a new version of ``target`` beside it, sync it, then swap it in with two renames. A kill
    at any step leaves a complete version: ``target``, or ``target.old`` between the renames."""
    tmp, old = target.with_name(target.name + ".tmp"), target.with_name(target.name + ".old")
    if not target.exists() and old.is_dir():
        _rename(old, target)  # a kill came between the renames last time: the old version is the current one
    _remove(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    fsync_tree(tmp)
    _remove(old)
    if target.exists():
        _rename(target, old)
    _rename(tmp, target)
    fsync_dir(target.parent)
    _remove(old)


def _rename(source: Path, dest: Path) -> None:
    source.rename(dest)


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _existing(target: Path) -> Path | None:
    """The folder, or its previous version when a kill came between the two renames of a swap."""
    for candidate in (target, target.with_name(target.name + ".old")):
        if candidate.is_dir():
            return candidate
    return None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


# -- best checkpoint -------------------------------------------------------------------------------
def save_best(model, processor, best_dir: Path) -> None:
    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    _swap_in(best_dir, write)


def restore_best(model, best_dir: Path) -> None:
    """Load the best checkpoint's weights back into ``model`` (in place, on its devices)."""
    folder = _existing(best_dir)
    if folder is None:
        raise VlmexpError(f"{best_dir}: the best checkpoint is missing; rerun with resume=false to train again")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if is_peft(model):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        result = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
        missing = trainable & set(result.missing_keys)
        if missing or result.unexpected_keys:
            raise VlmexpError(f"{folder}: the adapter does not fit this model (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(result.unexpected_keys)[:3]})")
        return
    # save_pretrained may rename keys to the checkpoint layout; from_pretrained maps them back.
    dtype = next(model.parameters()).dtype
    saved = type(model).from_pretrained(folder, dtype=dtype)
    model.load_state_dict(saved.state_dict(), strict=True)


# -- resume state ----------------------------------------------------------------------------------
def _rng_states(generator) -> dict:
    import numpy as np
    import torch

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "loader": generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict, generator) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    generator.set_state(states["loader"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_train_state(state_dir: Path, model, optimizer, scheduler, generator, progress: dict) -> None:
    import torch
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, folder / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": _rng_states(generator)}, folder / "optimizer.pt")
        write_text_atomic(folder / "progress.json", json.dumps(progress))

    _swap_in(state_dir, write)


def load_train_state(state_dir: Path, model, optimizer, scheduler, generator) -> dict | None:
    """Restore the state saved after the last finished epoch; its progress dict, or None if none."""
    import torch
    from safetensors.torch import load_file

    folder = _existing(state_dir)
    if folder is None or not (folder / "progress.json").is_file():
        return None
    tensors = load_file(folder / "trainable.safetensors")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != trainable:
        raise VlmexpError(f"{folder}: the saved training state does not match this model's trainable "
                          "parameters; rerun with resume=false to start over")
    model.load_state_dict(tensors, strict=False)
    # Our own file (optimizer tensors, numpy and python random states), written by save_train_state.
    saved = torch.load(folder / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_states(saved["rng"], generator)
    return json.loads((folder / "progress.json").read_text())
