"""``detector=yolo``: an ultralytics model from a ``.pt`` file (``YOLO`` by default; ``loader:
ultralytics.RTDETR`` for ultralytics' RT-DETR). Needs the ``annotate`` extra (``ultralytics``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlmexp.detectors.base import Detection, Detector, DetectorError, DetectorInput, keep_confident, resolve_device


class UltralyticsDetector(Detector):
    def __init__(self, weights: str, conf_threshold: float = 0.3, batch_size: int = 8, imgsz: int = 640,
                 loader: str = "ultralytics.YOLO", name: str = "yolo", device: str | None = None, *, run=None):
        from hydra.utils import get_class

        self.name, self.conf_threshold, self.batch_size, self.imgsz = name, conf_threshold, batch_size, imgsz
        self.device = resolve_device(device, run)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DetectorError(f"detector weights {weights}: no such file")
        try:
            self.model = get_class(loader)(str(path))
            task = self.model.task
        except Exception as exc:  # ultralytics raises many types for files that are not its checkpoints
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DetectorError(f"detector weights {weights}: not an ultralytics detector checkpoint "
                                f"({reason})") from None
        if task != "detect":
            raise DetectorError(f"detector weights {weights}: an ultralytics '{task}' model, not a detector")

    def classes(self) -> list[str]:
        names = self.model.names
        return [names[k] for k in sorted(names)]

    def detect(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        out = []
        for start in range(0, len(items), max(1, self.batch_size)):
            batch = [item.image for item in items[start:start + self.batch_size]]
            results = self.model.predict(batch, conf=self.conf_threshold, device=self.device, imgsz=self.imgsz,
                                         verbose=False)
            for result in results:
                boxes = result.boxes
                found = [Detection([round(float(v), 2) for v in xyxy], result.names[int(c)], float(s), [self.name])
                         for xyxy, s, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())]
                out.append(keep_confident(found, self.conf_threshold))
        return out
