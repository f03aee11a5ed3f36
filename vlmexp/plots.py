"""PNG plots for MLflow: loss curves and confusion matrices (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(train: Sequence[tuple[float, float]], val: Sequence[tuple[float, float]], path: Path,
               title: str = "loss") -> Path:
    """``train``/``val``: (epoch, loss) points; training points may be fractional epochs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train", alpha=0.7)
    if val:
        ax.plot(*zip(*val), marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix_png(truth: Sequence, pred: Sequence, labels: Sequence, path: Path,
                         title: str = "confusion matrix") -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    plt = _pyplot()
    matrix = confusion_matrix(list(truth), list(pred), labels=list(labels))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(matrix, display_labels=[str(label) for label in labels]).plot(ax=ax, colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curve_png(truth: Sequence[int], scores: Sequence[float], path: Path, title: str = "ROC curve") -> Path:
    """ROC curve of a binary classifier: ``truth`` 0/1, ``scores`` the positive class's probability."""
    from sklearn.metrics import RocCurveDisplay

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(list(truth), list(scores), ax=ax, plot_chance_level=True)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
