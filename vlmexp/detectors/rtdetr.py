"""``detector=rtdetr``: transformers' ``RTDetrForObjectDetection`` from a model folder (or Hub id) and
``RTDetrImageProcessor`` from a processor folder, as seed 003 keeps them (``.../m`` and ``.../p``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlmexp.detectors.base import Detection, Detector, DetectorError, DetectorInput, keep_confident, resolve_device


def _load(cls, source: str, key: str, what: str):
    try:
        return cls.from_pretrained(str(Path(source).expanduser()) if Path(source).expanduser().exists() else source)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetectorError(f"detector.{key}={source}: cannot load an RT-DETR {what} ({reason})") from None


class RTDetrDetector(Detector):
    def __init__(self, model: str, processor: str | None = None, conf_threshold: float = 0.3, batch_size: int = 8,
                 name: str = "rtdetr", device: str | None = None, *, run=None):
        from transformers import RTDetrForObjectDetection, RTDetrImageProcessor

        self.name, self.conf_threshold, self.batch_size = name, conf_threshold, batch_size
        self.device = resolve_device(device, run)
        self.model = _load(RTDetrForObjectDetection, model, "model", "model").to(self.device).eval()
        self.processor = _load(RTDetrImageProcessor, processor or model, "processor" if processor else "model",
                               "processor")

    def classes(self) -> list[str]:
        id2label = self.model.config.id2label
        return [id2label[k] for k in sorted(id2label)]

    def detect(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        import torch

        out, id2label = [], self.model.config.id2label
        for start in range(0, len(items), max(1, self.batch_size)):
            images = [item.image for item in items[start:start + self.batch_size]]
            inputs = self.processor(images=images, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            sizes = [(img.size[1], img.size[0]) for img in images]
            results = self.processor.post_process_object_detection(outputs, threshold=self.conf_threshold,
                                                                   target_sizes=sizes)
            for result in results:
                found = [Detection([round(float(v), 2) for v in box], id2label[int(c)], float(s), [self.name])
                         for box, s, c in zip(result["boxes"].tolist(), result["scores"].tolist(),
                                              result["labels"].tolist())]
                out.append(keep_confident(found, self.conf_threshold))
        return out
