"""The competitions' metrics, computed as Kaggle computes them."""
from __future__ import annotations

import numpy as np

from .submission import clip_probabilities


def kaggle_log_loss(y_true: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    """Kaggle's log loss: probabilities clipped to [eps, 1 - eps] (rows renormalised for several classes).
    p: P(class 1) for two classes, else one row of class probabilities per image."""
    y_true = np.asarray(y_true)
    p = clip_probabilities(p, eps)
    if p.ndim == 1:
        y = y_true.astype(np.float64)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(p)), y_true.astype(np.int64)])))


def predicted_labels(p: np.ndarray) -> np.ndarray:
    return p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5).astype(int)


def accuracy(y_true: np.ndarray, p: np.ndarray) -> float:
    return float((predicted_labels(p) == np.asarray(y_true)).mean())


def per_class_accuracy(y_true: np.ndarray, p: np.ndarray, classes: list[str]) -> tuple[dict, np.ndarray]:
    """Each class's accuracy (None for a class without images) and the confusion matrix (rows: true class)."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, predicted_labels(p), labels=list(range(len(classes))))
    return {c: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None for i, c in enumerate(classes)}, cm


def roc_auc(y_true: np.ndarray, p: np.ndarray) -> float | None:
    """Two classes with both present: the ROC AUC of P(class 1); else None."""
    from sklearn.metrics import roc_auc_score

    if p.ndim != 1 or len(np.unique(y_true)) != 2:
        return None
    return float(roc_auc_score(y_true, p))
