"""What each trainer needs from a task, declared as protocols and checked before training starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from vlmexp.errors import ConfigError
from vlmexp.tasks.base import TrainingExample


@runtime_checkable
class SupervisedTask(Protocol):
    """A task that supervised fine-tuning can train on: (request, answer) pairs per sample."""

    name: str

    def training_examples(self, samples: Sequence) -> list[TrainingExample]: ...


@runtime_checkable
class EpochMetricsTask(Protocol):
    """A task with its own validation metrics, computed after every epoch on the model being trained."""

    def epoch_metrics(self, engine, samples: Sequence) -> dict[str, float]: ...


@runtime_checkable
class ClassifierTask(SupervisedTask, Protocol):
    """A task whose answers are class names, trained as a head on the backbone (``head``: HeadConfig)."""

    class_names: list[str]
    head: object


def require(task, protocol: type, trainer: str) -> None:
    """One line naming what is missing when ``task`` does not provide ``protocol``."""
    if not isinstance(task, protocol):
        needs = ", ".join(name for name in protocol.__annotations__ | {
            k: None for k, v in vars(protocol).items() if callable(v) and not k.startswith("_")})
        raise ConfigError(f"task={getattr(task, 'name', type(task).__name__)} cannot be trained by {trainer}: "
                          f"it does not provide {protocol.__name__} ({needs}); use mode=eval")
