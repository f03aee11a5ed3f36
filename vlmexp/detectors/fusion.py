"""Fusing the boxes several detectors found in one image (``detector.fusion``): Weighted Boxes Fusion
(the ``ensemble-boxes`` package) or class-wise NMS (``torchvision.ops.batched_nms``). Boxes fuse only
within a class (after ``detector.class_map``). A fused box keeps the names of the detectors that agreed:
those with a box of its class overlapping it by at least the fusion IoU threshold."""

from __future__ import annotations

from vlmexp.detectors.base import Detection


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _agreeing(box: list[float], label: str, per_detector: dict[str, list[Detection]], threshold: float) -> list[str]:
    return [name for name, found in per_detector.items()
            if any(d.label == label and iou(d.box, box) >= threshold for d in found)]


class WeightedBoxesFusion:
    """WBF: overlapping boxes of a class are averaged, weighted by score; the fused score is their mean
    score times the share of detectors that found the object (``conf_type=avg``), so an object only one
    of two detectors saw keeps half its score. ``weights``: detector name -> weight (default 1 each)."""

    def __init__(self, iou_threshold: float = 0.55, skip_box_threshold: float = 0.0, conf_type: str = "avg",
                 weights: dict[str, float] | None = None):
        self.iou_threshold, self.skip_box_threshold, self.conf_type = iou_threshold, skip_box_threshold, conf_type
        self.weights = dict(weights or {})

    def fuse(self, per_detector: dict[str, list[Detection]], size: tuple[int, int]) -> list[Detection]:
        import numpy as np
        from ensemble_boxes import weighted_boxes_fusion

        width, height = size
        labels = sorted({d.label for found in per_detector.values() for d in found})
        if not labels:
            return []
        index = {label: i for i, label in enumerate(labels)}
        scale = np.array([width, height, width, height], dtype=float)
        boxes = [np.clip(np.array([d.box for d in found], dtype=float).reshape(-1, 4) / scale, 0, 1)
                 for found in per_detector.values()]
        scores = [[d.score for d in found] for found in per_detector.values()]
        classes = [[index[d.label] for d in found] for found in per_detector.values()]
        weights = [float(self.weights.get(name, 1.0)) for name in per_detector]
        fused, fused_scores, fused_labels = weighted_boxes_fusion(
            boxes, scores, classes, weights=weights, iou_thr=self.iou_threshold,
            skip_box_thr=self.skip_box_threshold, conf_type=self.conf_type)
        out = []
        for box, score, label_id in zip((fused * scale).tolist(), fused_scores.tolist(), fused_labels.tolist()):
            label = labels[int(label_id)]
            box = [round(v, 2) for v in box]
            out.append(Detection(box, label, round(score, 6), _agreeing(box, label, per_detector, self.iou_threshold)))
        return out


class ClassWiseNMS:
    """Class-wise non-maximum suppression: of overlapping boxes of a class the highest-scoring one stays,
    with its own score."""

    def __init__(self, iou_threshold: float = 0.5):
        self.iou_threshold = iou_threshold

    def fuse(self, per_detector: dict[str, list[Detection]], size: tuple[int, int]) -> list[Detection]:
        import torch
        from torchvision.ops import batched_nms

        every = [d for found in per_detector.values() for d in found]
        if not every:
            return []
        labels = sorted({d.label for d in every})
        boxes = torch.tensor([d.box for d in every], dtype=torch.float64)
        scores = torch.tensor([d.score for d in every], dtype=torch.float64)
        idxs = torch.tensor([labels.index(d.label) for d in every])
        keep = batched_nms(boxes, scores, idxs, self.iou_threshold).tolist()
        return [Detection(list(every[k].box), every[k].label, every[k].score,
                          _agreeing(every[k].box, every[k].label, per_detector, self.iou_threshold)) for k in keep]
