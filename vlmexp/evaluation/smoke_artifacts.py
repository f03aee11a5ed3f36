"""Human-facing files of a smoke evaluation: the per-sample table (CSV) and a gallery of boxes (PNG)."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

CSV_COLUMNS = ("id", "variant", "sequence", "frame", "time_s", "width", "height", "truth", "true_boxes",
               "pred", "pred_boxes", "confidence", "parse_ok", "latency_s", "raw", "error",
               "explanation", "skipped")
TRUE_COLOUR, PRED_COLOUR = "#22c55e", "#ef4444"


def predictions_csv(records: Sequence[dict], path: Path) -> Path:
    """One row per sample (skipped ones too, with the reason), its columns named as the fields of
    ``predictions.jsonl``; boxes as JSON lists."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in records:
            row = {k: r.get(k) for k in CSV_COLUMNS}
            row.update(variant=r.get("variant", "clean"))
            for key in ("true_boxes", "pred_boxes"):
                row[key] = json.dumps(r[key]) if r.get(key) is not None else None
            writer.writerow(row)
    return path


def _outcome(r: dict) -> str:
    return {(True, True): "TP", (False, True): "FP", (True, False): "FN", (False, False): "TN"}[
        (bool(r["truth"]), bool(r["pred"]))]


def gallery_selection(records: Sequence[dict], size: int) -> list[dict]:
    """Up to ``size`` records, mistakes first: FN, FP, then TP, TN, in turn so each kind shows."""
    groups = {k: [r for r in records if _outcome(r) == k] for k in ("FN", "FP", "TP", "TN")}
    chosen: list[dict] = []
    while len(chosen) < size and any(groups.values()):
        for kind in ("FN", "FP", "TP", "TN"):
            if groups[kind] and len(chosen) < size:
                chosen.append(groups[kind].pop(0))
    return chosen


def _draw_boxes(ax, boxes, width: int, height: int, colour: str, style: str) -> None:
    from matplotlib.patches import Rectangle

    for cx, cy, w, h in boxes:
        ax.add_patch(Rectangle(((cx - w / 2) * width, (cy - h / 2) * height), w * width, h * height,
                               fill=False, edgecolor=colour, linewidth=2, linestyle=style))


def gallery_png(records: Sequence[dict], load_image, path: Path, size: int = 12, columns: int = 4) -> Path | None:
    """Frames with the true boxes (green, solid) and predicted boxes (red, dashed).

    ``load_image(record)`` returns the PIL image of a record as the model saw it (or None).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = gallery_selection(records, size)
    if not chosen:
        return None
    rows = (len(chosen) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, r in zip(axes.ravel(), chosen):
        image = load_image(r)
        if image is None:
            continue
        ax.imshow(image)
        _draw_boxes(ax, r.get("true_boxes") or [], image.width, image.height, TRUE_COLOUR, "-")
        _draw_boxes(ax, (r.get("pred_boxes") or []) if r["pred"] else [], image.width, image.height, PRED_COLOUR, "--")
        ax.set_title(f"{_outcome(r)} {r['id']}"[:40], fontsize=8)
    fig.suptitle("true boxes: green, solid; predicted: red, dashed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
