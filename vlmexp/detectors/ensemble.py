"""``detector=ensemble``: several detectors on the same images, their class names mapped onto one
vocabulary (``class_map``: detector class -> vocabulary class; unmapped names are kept), then fused
per image (``fusion``: WBF or class-wise NMS)."""

from __future__ import annotations

from collections.abc import Sequence

from vlmexp.detectors.base import Detection, Detector, DetectorError, DetectorInput, build_plugin, keep_confident


class EnsembleDetector(Detector):
    def __init__(self, detectors: dict, fusion, class_map: dict[str, str] | None = None,
                 fused_threshold: float = 0.0, conf_threshold: float = 0.3, name: str = "ensemble", *, run=None):
        from hydra.utils import instantiate

        if not detectors:
            raise DetectorError("detector.detectors: the ensemble lists no detectors")
        self.name, self.fused_threshold = name, fused_threshold
        # a member without its own conf_threshold takes the ensemble's (the group's detector.conf_threshold)
        self.detectors = {key: build_plugin(node, run, name=key, **({} if "conf_threshold" in node
                                                                     else {"conf_threshold": conf_threshold}))
                          for key, node in detectors.items()}
        self.class_map = {str(k): str(v) for k, v in (class_map or {}).items()}
        self.fusion = instantiate(fusion)
        known = {c for d in self.detectors.values() for c in d.classes()}
        for source in self.class_map:
            if source not in known:
                have = "; ".join(f"{k}: {', '.join(d.classes()[:8])}{' ...' if len(d.classes()) > 8 else ''}"
                                 for k, d in self.detectors.items())
                raise DetectorError(f"detector.class_map: {source!r} is not a class of any detector ({have})")

    def classes(self) -> list[str]:
        return sorted({self.class_map.get(c, c) for d in self.detectors.values() for c in d.classes()})

    def detect(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        found = {key: detector.detect(items) for key, detector in self.detectors.items()}
        out = []
        for i, item in enumerate(items):
            per_detector = {key: [Detection(d.box, self.class_map.get(d.label, d.label), d.score, d.sources)
                                  for d in found[key][i]] for key in self.detectors}
            out.append(keep_confident(self.fusion.fuse(per_detector, item.image.size), self.fused_threshold))
        return out
