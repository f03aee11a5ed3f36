"""A detector plugin that returns scripted detections (by image file name), built by ``_target_`` like
any detector: fusion and class mapping are tested on boxes whose fused result is known by hand."""

from __future__ import annotations

from collections.abc import Sequence

from vlmexp.detectors.base import Detection, Detector, DetectorInput, keep_confident


class ScriptedDetector(Detector):
    def __init__(self, boxes: dict, names: list[str], conf_threshold: float = 0.3, name: str = "scripted", *,
                 run=None):
        self.boxes, self.names, self.conf_threshold, self.name = boxes, list(names), conf_threshold, name

    def classes(self) -> list[str]:
        return self.names

    def detect(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        return [keep_confident([Detection(list(b["box"]), b["label"], b["score"], [self.name])
                                for b in self.boxes.get(item.path.name, [])], self.conf_threshold) for item in items]
