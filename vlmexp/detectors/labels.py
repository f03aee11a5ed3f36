"""``detector=labels``: the boxes of existing YOLO label files, so a labelled set becomes Q&A data
without running a detector. Label files are found as the smoke task's layouts have them:
``.../images/x.jpg`` -> ``.../labels/x.txt``, else ``x.txt`` beside the image. Class names come from
``names_file``, else ``data.yaml`` (``names:`` list or id -> name map) or ``classes.txt`` (one a line) in
``data.root`` or its ``labels/`` folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlmexp.data.smoke import read_yolo_boxes
from vlmexp.data.text import read_text
from vlmexp.detectors.base import Detection, Detector, DetectorError, DetectorInput, keep_confident
from vlmexp.errors import DataError

NAMES_FILES = ("data.yaml", "classes.txt", "labels/classes.txt")


def read_class_names(path: Path) -> dict[int, str]:
    """Class id -> name from a YOLO ``data.yaml`` or a ``classes.txt``."""
    text = read_text(path, "class names file")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            names = (yaml.safe_load(text) or {}).get("names")
        except (yaml.YAMLError, AttributeError) as exc:
            raise DataError(f"{path}: not a YOLO data.yaml ({str(exc).splitlines()[0]})") from None
        if isinstance(names, list):
            return {i: str(n) for i, n in enumerate(names)}
        if isinstance(names, dict):
            return {int(k): str(v) for k, v in names.items()}
        raise DataError(f"{path}: no 'names:' list or id -> name map")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: no class names (one per line expected)")
    return dict(enumerate(lines))


def label_file(image: Path, root: Path) -> Path:
    """Where the YOLO label file of ``image`` lives: in the ``labels/`` twin of its ``images/`` folder,
    else beside it."""
    try:
        parts = list(image.relative_to(root).parts)
    except ValueError:
        parts = []
    if "images" in parts[:-1]:
        k = len(parts) - 1 - parts[::-1].index("images")
        parts[k] = "labels"
        return (root / Path(*parts)).with_suffix(".txt")
    return image.with_suffix(".txt")


class LabelsDetector(Detector):
    """Boxes from YOLO label files under ``root`` (default: ``data.root``), score 1."""

    def __init__(self, names_file: str | None = None, root: str | None = None, conf_threshold: float = 0.3,
                 name: str = "labels", *, run=None):
        self.name = name
        self.conf_threshold = conf_threshold
        root = root or (run.cfg.data.root if run is not None else None)
        if not root:
            raise DetectorError("detector=labels needs data.root (the images with their YOLO label files)")
        self.root = Path(root).expanduser()
        self.names = read_class_names(self._names_file(names_file))

    def _names_file(self, names_file: str | None) -> Path:
        if names_file:
            path = Path(names_file).expanduser()
            if not path.is_file():
                raise DetectorError(f"detector.names_file={names_file}: no such file")
            return path
        for candidate in NAMES_FILES:
            if (self.root / candidate).is_file():
                return self.root / candidate
        raise DetectorError(f"{self.root}: no data.yaml or classes.txt naming the YOLO classes "
                            "(or set detector.names_file)")

    def classes(self) -> list[str]:
        return [self.names[k] for k in sorted(self.names)]

    def detect(self, items: Sequence[DetectorInput]) -> list[list[Detection]]:
        out = []
        for item in items:
            width, height = item.image.size
            found = []
            path = label_file(item.path, self.root)
            for cls, (cx, cy, w, h) in read_yolo_boxes(path):
                if cls not in self.names:
                    raise DataError(f"{path}: class id {cls} has no name (classes: {self.classes()})")
                box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
                found.append(Detection([round(v, 2) for v in box], self.names[cls], 1.0, [self.name]))
            out.append(keep_confident(found, self.conf_threshold))
        return out
