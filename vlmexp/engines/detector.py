"""``engine=yolo``: a detector baseline that answers the smoke task in its JSON contract.

A detector plugin (``engine.detector``, any ``vlmexp.detectors`` ``_target_``) looks at the request's last
image (the current frame; earlier frames of a multi-frame request are context a detector has no use
for); its most confident box of a class in ``smoke_classes`` becomes ``{"has_smoke": true, "bbox":
[cx, cy, w, h], "confidence": score}``, normalised to the image, and no such box ``{"has_smoke": false,
...}``. The task scores these answers exactly as it scores a VLM's, so a VLM is measured against a detector.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from omegaconf import DictConfig, OmegaConf

from vlmexp.detectors.base import Detection, DetectorInput, build_plugin
from vlmexp.engines.base import Engine
from vlmexp.errors import ConfigError, EngineError
from vlmexp.messages import ChatRequest, Generation


def smoke_answer(detections: list[Detection], smoke_classes: set[str], size: tuple[int, int]) -> str:
    """The contract's JSON for one image: the most confident smoke box, normalised, or no smoke."""
    smoke = [d for d in detections if d.label in smoke_classes]
    if not smoke:
        return json.dumps({"has_smoke": False, "bbox": [0, 0, 0, 0]})
    best = max(smoke, key=lambda d: d.score)
    w, h = size
    x1, y1, x2, y2 = best.box
    box = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
    return json.dumps({"has_smoke": True, "bbox": [round(v, 5) for v in box], "confidence": round(best.score, 5)})


class DetectorEngine(Engine):
    """``detector``: a detector plugin's config (``_target_`` and its keys); ``smoke_classes``: the
    detector's class names that count as smoke."""

    execution_keys = frozenset({"batch_size"})

    def __init__(self, detector: DictConfig, smoke_classes: Sequence[str] = ("smoke",), batch_size: int = 16, *,
                 run=None):
        from vlmexp.config.validate import check_target_keys

        missing = sorted(OmegaConf.missing_keys(detector))
        if missing:
            name = missing[0].removeprefix("detector.")  # the path from the engine's node, when attached
            raise ConfigError(f"engine.detector.{name} is not set (e.g. engine.detector.weights=best.pt)")
        check_target_keys(detector, "engine.detector", exclude=("run",))
        self.detector = build_plugin(detector, run)
        self.batch_size = max(1, batch_size)
        self.smoke_classes = {str(c) for c in smoke_classes}
        known = self.detector.classes()
        unknown = sorted(self.smoke_classes - set(known))
        if unknown:
            raise ConfigError(f"engine.smoke_classes: {unknown[0]!r} is not a class of the detector "
                              f"(its classes: {', '.join(known)})")
        self.weights = detector.get("weights") or detector.get("model")

    def preferred_batch_size(self) -> int:
        return self.batch_size

    def model_identity(self) -> dict[str, str]:
        """The weights file's name and content hash (other weights behind the same path change the key)."""
        from pathlib import Path

        from vlmexp.content import file_hash
        from vlmexp.models.identity import folder_hash

        if not self.weights:
            return {}
        path = Path(self.weights).expanduser()
        if path.is_dir():
            return {"checkpoint": path.name, "sha256": folder_hash(path)}
        if path.is_file():
            return {"checkpoint": path.name, "sha256": file_hash(path, path.stat().st_size)}
        return {}

    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        if any(not r.images for r in requests):
            raise EngineError("engine=yolo answers requests with an image only (task=smoke)")
        items = [DetectorInput(None, r.images[-1]) for r in requests]
        began = time.perf_counter()
        found = self.detector.detect(items)
        elapsed = time.perf_counter() - began
        return [Generation(smoke_answer(d, self.smoke_classes, item.image.size), latency_s=elapsed / len(items),
                           image_sizes=[item.image.size]) for d, item in zip(found, items)]

    def close(self) -> None:
        self.detector = None
