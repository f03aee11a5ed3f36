"""What a task plugin provides. A task is one module (a subclass of :class:`Task`) plus one YAML in
``conf/task/`` whose ``_target_`` names it; the runner never branches on task names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainingExample:
    """One supervised pair: the request as the model will see it and the answer it should give.
    ``load`` builds the request lazily (images are read when the batch is made)."""

    id: str
    load: Any  # () -> tuple[ChatRequest, str]


@dataclass(frozen=True)
class Verdict:
    """One sample's decision, as ``vlmexp compare`` pairs them: the answer and the truth as text."""

    answer: str
    truth: str
    correct: bool


@dataclass
class Splits:
    train: list | None
    val: list | None
    test: list | None
    # Counts of samples dropped while loading (missing files and the like), logged as metrics.
    skipped: dict[str, int] | None = None


class Task(ABC):
    """A task: its data, how it asks the model, and how it scores the answers. A task that can be
    trained also provides what its trainer needs (``vlmexp.trainers.protocols``)."""

    #: Modes this task can run; the runner refuses others with one clear line.
    modes: tuple[str, ...] = ("train", "eval", "train_eval")
    #: The metric leaderboards rank by (``vlmexp report``).
    main_metric: str | None = None
    #: What one sample is, in metric names (``cost_per_1k_<unit>``).
    sample_unit: str = "samples"
    #: ``data.<key>`` entries this task reads as files or folders; each is checked to exist up front.
    path_keys: tuple[str, ...] = ()
    #: ``task.<key>`` entries applied only to the stored predictions (metrics, exports): left out of the run's
    #: fingerprint, so changing them reuses the predictions.
    derived_keys: tuple[str, ...] = ()
    #: The prediction record's field holding the sample's image file (galleries, comparisons); None: no image.
    image_field: str | None = None

    @classmethod
    def inert_keys(cls, task_cfg: dict) -> tuple[str, ...]:
        """``task.<key>`` entries that, with the values in ``task_cfg``, change nothing the model is asked
        (a switch at its off value and the settings only it reads): left out of the run's fingerprint, so
        adding such a switch keeps the fingerprints and predictions of existing runs."""
        return ()

    def __init__(self, name: str, default_mode: str = "eval", trainer: Any = None, evaluator: Any = None,
                 description: str = ""):
        self.name = name
        self.description = description  # what the task is, for people (the MLflow experiment's description)
        self.default_mode = default_mode
        self.trainer = trainer
        self.evaluator = evaluator

    # -- data -----------------------------------------------------------------------------------
    @abstractmethod
    def load_splits(self, run) -> Splits:
        """The samples of each split the current mode needs (each with a unique ``id``)."""

    # -- evaluation -----------------------------------------------------------------------------
    def evaluation_engine(self, run, trained=None):
        """The engine evaluation runs on: the configured one (``cfg.engine``), holding the fine-tuned
        model when ``trained`` (the trainer's result) is given. A task whose trainer produces
        something other than a generative model overrides this (through ``run.build_engine``)."""
        if trained is None:
            return run.build_engine()
        return run.build_engine(model=trained.model, processor=trained.processor)

    @abstractmethod
    def predict(self, engine, samples: Sequence) -> list[dict]:
        """One JSON-serialisable record per sample, with ``id``; a sample that cannot be read gives
        ``{"id": ..., "skipped": "reason"}`` instead of raising."""

    @abstractmethod
    def compute_metrics(self, records: list[dict]) -> dict[str, float]:
        ...

    def write_artifacts(self, records: list[dict], metrics: dict[str, float], out_dir: Path) -> list[Path]:
        return []

    def summary_keys(self) -> list[str]:
        """Metrics shown in the terminal's results table."""
        return []

    def resamplings(self, records: list[dict]) -> list:
        """How to bootstrap this task's headline metrics (:class:`vlmexp.evaluation.bootstrap.Resampling`
        items, each giving some of the metrics ``compute_metrics`` gives, from weighted records); the
        runner logs their intervals as ``<metric>_ci_low`` / ``<metric>_ci_high``. None by default."""
        return []

    def verdict(self, record: dict) -> Verdict | None:
        """The sample's decision and whether it is right (None: not scored, e.g. skipped)."""
        return None

    def record_image(self, record: dict):
        """The image of a record as the model saw it (a PIL image), for galleries; None without one
        (or when it can no longer be read)."""
        from vlmexp.data.images import UnreadableImage, open_image

        if not self.image_field or not record.get(self.image_field):
            return None
        try:
            return open_image(record[self.image_field])
        except UnreadableImage:
            return None
