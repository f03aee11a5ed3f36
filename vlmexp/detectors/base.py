"""What every detector returns and how detector plugins are built."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmexp.errors import VlmexpError


class DetectorError(VlmexpError):
    """A detector cannot be built: its weights file or folder is missing or is not a detector."""


@dataclass
class Detection:
    """One object: ``box`` in pixels ``[x1, y1, x2, y2]`` of the original image, its class name, score and
    the detectors that found it (more than one after fusion)."""

    box: list[float]
    label: str
    score: float
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "label": self.label,
                "score": round(float(self.score), 4), "sources": list(self.sources)}


@dataclass
class DetectorInput:
    """An image to detect objects in: its file (the ``labels`` detector reads the label file beside it)
    and the decoded RGB image."""

    path: Path
    image: Any  # PIL.Image.Image


class Detector(ABC):
    """A detector plugin. ``name`` is how its boxes are credited in ``sources``."""

    name: str = "detector"

    @abstractmethod
    def classes(self) -> list[str]:
        """The class names this detector can return (checked against ``detector.class_map``)."""

    @abstractmethod
    def detect(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        """Detections of each image, in the order of ``items``, with a score >= the threshold."""


def resolve_device(device: str | None, run) -> str:
    """``device`` when set, else the run's hardware placement (``hardware=``), else CPU."""
    if device:
        return device
    return run.placement.device if run is not None else "cpu"


def build_plugin(node, run, **kwargs):
    """Instantiate the plugin ``node`` names (a detector, a captioner), handing it the run when its
    constructor takes one; a constructor's user-facing error is raised as is (Hydra would wrap it in a
    multi-line InstantiationException)."""
    import inspect

    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    params = inspect.signature(get_class(node._target_).__init__).parameters
    if "run" in params:
        kwargs["run"] = run
    try:
        # the run goes to the constructor, not through Hydra's config merge (it is not config)
        return instantiate(node, _recursive_=False, _partial_=True)(**kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, VlmexpError):
            raise exc.__cause__ from None
        raise


def keep_confident(detections: list[Detection], threshold: float) -> list[Detection]:
    return sorted((d for d in detections if d.score >= threshold), key=lambda d: -d.score)
