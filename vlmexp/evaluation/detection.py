"""Localisation metrics for one-box-per-image detection answers (torchvision IoU, torchmetrics mAP).

Records are dicts with ``truth`` (bool), ``true_boxes`` and ``pred_boxes`` (normalised
``[cx, cy, w, h]``), ``pred`` (the scored has-smoke decision), ``width``/``height`` of the image and an
optional ``confidence`` (the detection score; 1.0 when the answer gave none).
"""

from __future__ import annotations

from collections.abc import Sequence


def _pixel_xyxy(boxes: Sequence[Sequence[float]], width: int, height: int):
    import torch
    from torchvision.ops import box_convert

    if not boxes:
        return torch.zeros((0, 4))
    scaled = torch.tensor(boxes, dtype=torch.float64) * torch.tensor([width, height, width, height])
    return box_convert(scaled, "cxcywh", "xyxy").float()


def best_iou(pred_boxes: Sequence[Sequence[float]], true_boxes: Sequence[Sequence[float]],
             size: tuple[int, int] = (1, 1)) -> float:
    """The largest IoU between any predicted and any true box (0.0 when either side has none)."""
    from torchvision.ops import box_iou

    if not pred_boxes or not true_boxes:
        return 0.0
    return float(box_iou(_pixel_xyxy(pred_boxes, *size), _pixel_xyxy(true_boxes, *size)).max())


def localisation_metrics(records: Sequence[dict], iou_threshold: float = 0.4) -> dict[str, float]:
    """``mean_iou`` over images that are smoke and predicted smoke; ``iou40_hit_rate``: share of smoke
    images predicted smoke with IoU >= threshold; ``map_iou40``: average precision at that threshold.
    A metric with nothing to average over (no smoke images) is left out."""
    metrics: dict[str, float] = {}
    smoke = [r for r in records if r["truth"]]
    ious = {id(r): best_iou(r["pred_boxes"], r["true_boxes"], (r["width"], r["height"])) for r in smoke if r["pred"]}
    if ious:
        metrics["mean_iou"] = sum(ious.values()) / len(ious)
    if smoke:
        metrics["iou40_hit_rate"] = sum(ious.get(id(r), 0.0) >= iou_threshold for r in smoke) / len(smoke)
        metrics["map_iou40"] = average_precision(records, iou_threshold)
    return metrics


def average_precision(records: Sequence[dict], iou_threshold: float) -> float:
    """COCO-style (101-point interpolated) AP of the smoke class at one IoU threshold, over all images:
    a smoke prediction on a clear image is a false positive, a missed plume a false negative."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    preds, targets = [], []
    for r in records:
        size = (r["width"], r["height"])
        boxes = _pixel_xyxy(r["pred_boxes"] if r["pred"] else [], *size)
        score = r.get("confidence")
        preds.append({"boxes": boxes, "scores": torch.full((len(boxes),), 1.0 if score is None else float(score)),
                      "labels": torch.zeros(len(boxes), dtype=torch.long)})
        truth = _pixel_xyxy(r["true_boxes"], *size)
        targets.append({"boxes": truth, "labels": torch.zeros(len(truth), dtype=torch.long)})
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", iou_thresholds=[iou_threshold],
                                  backend="pycocotools", sync_on_compute=False)  # holds every record already
    metric.update(preds, targets)
    return max(0.0, float(metric.compute()["map"]))
