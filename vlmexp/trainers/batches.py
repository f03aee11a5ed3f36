"""Training examples read into batches, in this process or in DataLoader worker processes.

With ``train.num_workers`` > 0 the examples are read and their features built in worker processes
while the model trains on the batch before. What a worker learns cannot stay in the worker, so it
travels inside the batch: an example whose image cannot be read becomes an :class:`Unreadable`,
left out of the batch and counted by the process that iterates the loader (:class:`SkippedExamples`);
a :class:`~vlmexp.errors.VlmexpError` raised while building an example is raised again there, as
one line naming the example (torch would re-raise it with the worker's traceback as its message).
Workers are forked (Linux): the examples' loaders are closures, which cannot be sent to a spawned
process; elsewhere the examples are read in the training process. ``train.num_workers=null`` (the
default) starts one worker only where a core is left for it (:func:`worker_count`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vlmexp.errors import VlmexpError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unreadable:
    """An example whose image could not be read: its id and why."""

    id: str
    reason: str


@dataclass(frozen=True)
class Raised:
    """A VlmexpError raised while building an example, to be raised again by the loader's reader."""

    error: VlmexpError


class Loaded(NamedTuple):
    """What a loader built with :class:`SkippingCollate` gives: the batch ({} when no example of it
    was readable), the unreadable examples left out of it, and an error to raise (or None). A tuple,
    so that accelerate moves the batch's tensors to the device."""

    batch: Any
    unreadable: list[Unreadable]
    error: VlmexpError | None


class TrainingExamples:
    """A map-style dataset over training examples: ``build(request, answer)`` of each example, an
    :class:`Unreadable` where its image cannot be read, a :class:`Raised` for a VlmexpError (its
    message prefixed with the example's id)."""

    def __init__(self, examples: Sequence, build: Callable[[Any, str], Any]):
        self.examples, self.build = examples, build

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        from vlmexp.data.images import UnreadableImage

        example = self.examples[i]
        try:
            return self.build(*example.load())
        except UnreadableImage as exc:
            return Unreadable(example.id, str(exc))
        except VlmexpError as exc:
            return Raised(type(exc)(f"training example {example.id}: {exc}"))


def worker_count(requested: int | None, device: str) -> int:
    """``train.num_workers``; when null, one worker where a core is left for it (training on an
    accelerator, or on a CPU where the torch threads of this machine's training processes leave a
    core free), else none: on a 2-core CPU with both cores running torch's threads, a worker made
    the quickstart about 30% slower."""
    if requested is not None:
        return requested
    if device != "cpu":
        return 1
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun (and accelerate launch)
    return 1 if torch.get_num_threads() * processes < cores else 0


def loader_workers(requested: int | None, device: str) -> dict[str, Any]:
    """DataLoader arguments for the worker processes of ``train.num_workers`` (:func:`worker_count`),
    forked; none where fork is not there."""
    num_workers = worker_count(requested, device)
    if num_workers == 0:
        return {"num_workers": 0}
    if sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods():
        log.info("train.num_workers=%d: worker processes need fork (Linux); reading the training examples "
                 "in the training process", num_workers)
        return {"num_workers": 0}
    return {"num_workers": num_workers, "multiprocessing_context": "fork"}


class SkippingCollate:
    """``collate`` over the readable items of a batch; gives :class:`Loaded`."""

    def __init__(self, collate: Callable[[list], Any]):
        self.collate = collate

    def __call__(self, items: list) -> Loaded:
        raised = next((item for item in items if isinstance(item, Raised)), None)
        if raised is not None:
            return Loaded({}, [], raised.error)
        unreadable = [item for item in items if isinstance(item, Unreadable)]
        kept = [item for item in items if not isinstance(item, Unreadable)]
        return Loaded(self.collate(kept) if kept else {}, unreadable, None)


class SkippedExamples:
    """The ids of the unreadable examples met while reading loaders; each is named once in the log."""

    def __init__(self):
        self.ids: set[str] = set()

    def batches(self, loaded: Iterable[Loaded]) -> Iterator[Any]:
        """The batches of a :class:`SkippingCollate` loader that hold at least one example."""
        for batch, unreadable, error in loaded:
            if error is not None:
                raise error
            for item in unreadable:
                if item.id not in self.ids:
                    log.warning("skipping unreadable training image: %s", item.reason)
                    self.ids.add(item.id)
            if batch:
                yield batch
