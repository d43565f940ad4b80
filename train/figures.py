"""The seed notebook's two figures, written to PNG files instead of plt.show()."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def sample_grid(path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    """4x4 grid of training images with their labels."""
    plt = _pyplot()
    fig = plt.figure(figsize=(8, 8))
    for i in range(min(16, len(images))):
        ax = fig.add_subplot(4, 4, i + 1)
        ax.imshow(images[i], cmap="gray")
        ax.set_title(f"label: {classes[int(labels[i])]}")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Counts of (true, predicted) label pairs: rows true, columns predicted."""
    return np.bincount(np.asarray(true, np.int64) * n + np.asarray(pred, np.int64), minlength=n * n).reshape(n, n)


def confusion_png(path, cm: np.ndarray, classes: list[str], title: str = "Confusion matrix") -> None:
    """Annotated heatmap, rows = true label, columns = predicted label."""
    plt = _pyplot()
    n = len(classes)
    fig, ax = plt.subplots(figsize=(8, 7))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(n), classes)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if cm[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)
