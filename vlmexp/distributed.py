"""The processes of one run started by ``accelerate launch`` or ``torchrun``: which one is the main
process, waiting for each other, and sharing a value decided by the main process.

The launchers set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a run started as one process is rank 0
of 1, and every call here is then free (no process group is made).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> None:
    """Join the launcher's process group (gloo on CPU, NCCL on GPUs) through accelerate, whose
    Accelerator later finds it made; nothing for a single process. ``device``: ``hardware.device``."""
    if world_size() > 1:
        from accelerate import PartialState

        from vlmexp.hardware import resolve_device

        PartialState(cpu=resolve_device(device) == "cpu")


def device_for(device: str) -> str:
    """The device this process uses: its own GPU (``cuda:<local rank>``) when several share a machine."""
    return f"cuda:{local_rank()}" if device == "cuda" and world_size() > 1 else device


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """The main process's ``value``, in every process (a picklable object)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (building caches, generating data, writing a model
    once); the others run it after, and find what it made."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
