"""Every picture the pipeline draws (PNG, written atomically): learning curves, ROC and calibration, the confusion
matrix, grids of images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)


def learning_curve(history: list[dict[str, float]], path: Path) -> None:
    """Log loss and accuracy per epoch, training and validation (fine-tuning: a line where phase 2 starts)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    phase_2 = next((h["epoch"] for h in history if h.get("phase") == 2), None)
    for ax, key in zip(axes, ("log_loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = [h.get(prefix + key) for h in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, vals, style, marker="o", label=(prefix or "train_") + key)
        if phase_2 is not None:
            ax.axvline(phase_2 - 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def roc(y: np.ndarray, p: np.ndarray, auc: float, positive: str, path: Path) -> None:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = _pyplot().subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (P({positive}))")
    ax.legend()
    _save(fig, path)


def calibration(y: np.ndarray, p: np.ndarray, positive: str, path: Path) -> None:
    """Mean predicted probability against the observed share, in ten bins."""
    which = np.clip(np.digitize(p, np.linspace(0, 1, 11)) - 1, 0, 9)
    bins = [b for b in range(10) if (which == b).any()]
    fig, ax = _pyplot().subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:")
    ax.plot([float(p[which == b].mean()) for b in bins], [float(y[which == b].mean()) for b in bins], marker="o")
    ax.set(xlabel="mean predicted probability", ylabel=f"fraction {positive}", title="calibration (validation)")
    _save(fig, path)


def confusion_matrix(cm: np.ndarray, classes: list[str], path: Path) -> None:
    fig, ax = _pyplot().subplots(figsize=(7, 6))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (validation)")
    fig.colorbar(im)
    fig.tight_layout()
    _save(fig, path)


def image_rows(rows: list[tuple[str, list[np.ndarray], list[str]]], title: str, path: Path,
               empty: str = "nothing to show") -> None:
    """Rows of captioned images (uint8 HxWx3), each row with a label on its left ("" for none); `empty` is drawn
    when there are no images, so the file always says what it found."""
    plt = _pyplot()
    ncols = max([len(images) for _, images, _ in rows] or [1])
    labelled = any(label for label, _, _ in rows)
    fig, axes = plt.subplots(max(1, len(rows)), ncols, squeeze=False, layout="constrained",
                             figsize=(max(6.0, 1.6 * ncols + (1.0 if labelled else 0.2)), 1.9 * max(1, len(rows)) + 0.7))
    for ax in axes.flat:
        ax.set_axis_off()
    if not rows:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", transform=fig.transFigure)
    for r, (label, images, captions) in enumerate(rows):
        for c, (image, caption) in enumerate(zip(images, captions)):
            ax = axes[r, c]
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(image, interpolation="nearest")  # CIFAR's 32x32 pixels stay sharp, not smeared
            ax.set_title(caption, fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
