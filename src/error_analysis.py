"""Error analysis as pictures: which validation (or out-of-fold) images the model gets wrong, and how.

Evaluate draws two grids from the finalized probabilities (what a submission holds) and prepare's images
(train.npy rows, found through the manifests' index column), into plots/<dataset>/<name>/:

    most_wrong.png       the evaluate.error_grid misclassified images that got the least probability for their
                         true class (the biggest log-loss terms), each captioned: id [fold], true class, predicted
                         class and its probability
    confused_pairs.png   one row per (true, predicted) class pair, the evaluate.confused_pairs pairs with most errors
                         first (two classes: cat -> dog and dog -> cat), each with up to EXAMPLES_PER_PAIR of its
                         images, the most confidently wrong first
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import plots
from .manifests import Manifests
from .metrics import predicted_labels
from .paths import Layout

EXAMPLES_PER_PAIR = 8
COLUMNS = 8  # most_wrong.png: images per row


@dataclass(frozen=True)
class Pair:
    true: int
    predicted: int
    count: int        # validation images of class `true` predicted as `predicted`
    rows: np.ndarray  # up to EXAMPLES_PER_PAIR of them, the most confident first


def class_probabilities(p: np.ndarray) -> np.ndarray:
    """One row of class probabilities per image (two classes: [1 - P(class 1), P(class 1)])."""
    return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p


def most_wrong(y: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Positions of up to k misclassified images, the least probability given to the true class first (ties in
    row order)."""
    y = np.asarray(y, dtype=np.int64)
    wrong = np.flatnonzero(predicted_labels(p) != y)
    given = class_probabilities(p)[wrong, y[wrong]]
    return wrong[np.argsort(given, kind="stable")][:k]


def confused_pairs(y: np.ndarray, p: np.ndarray, num_classes: int, k: int,
                   per_pair: int = EXAMPLES_PER_PAIR) -> list[Pair]:
    """The k (true, predicted) pairs with most misclassified images (ties: by class numbers), with examples."""
    y, pred, q = np.asarray(y, dtype=np.int64), predicted_labels(p), class_probabilities(p)
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (y, pred), 1)
    np.fill_diagonal(counts, 0)
    order = np.argsort(-counts.reshape(-1), kind="stable")
    pairs = []
    for flat in order[:k]:
        t, pr = divmod(int(flat), num_classes)
        if counts[t, pr] == 0:
            break
        rows = np.flatnonzero((y == t) & (pred == pr))
        pairs.append(Pair(t, pr, int(counts[t, pr]), rows[np.argsort(-q[rows, pr], kind="stable")][:per_pair]))
    return pairs


def draw(lay: Layout, m: Manifests, frame: pd.DataFrame, y: np.ndarray, p: np.ndarray, classes: list[str],
         error_grid: int, pairs: int) -> None:
    """most_wrong.png and confused_pairs.png for the validation (OOF) rows `frame` (id[, fold]) and their
    finalized probabilities p."""
    q, pred = class_probabilities(p), predicted_labels(p)
    ids = frame["id"].astype(str).to_numpy()
    fold = frame["fold"].astype(str).to_numpy() if "fold" in frame and lay.folds else None

    def caption(i: int) -> str:
        where = f"{ids[i]}" + (f" (fold {fold[i]})" if fold is not None else "")
        return f"{where}\ntrue {classes[y[i]]}\n{classes[pred[i]]} {q[i, pred[i]]:.3f}"

    def cells(positions: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
        return list(m.labelled_images(ids[positions])), [caption(int(i)) for i in positions]

    n_wrong = int((pred != np.asarray(y)).sum())
    worst = most_wrong(y, p, error_grid)
    images, captions = cells(worst)
    grid = [("", images[s:s + COLUMNS], captions[s:s + COLUMNS]) for s in range(0, len(worst), COLUMNS)]
    plots.image_rows(grid, f"most confidently wrong: {len(worst)} of the {n_wrong} misclassified of {len(y)}\n"
                           "id, true class, predicted class and its probability", lay.plot("most_wrong.png"),
                     empty=f"no misclassified images among {len(y)}")
    rows = [(f"{classes[c.true]} -> {classes[c.predicted]}\n{c.count} images", *cells(c.rows))
            for c in confused_pairs(y, p, len(classes), pairs)]
    plots.image_rows(rows, "most confused class pairs (true -> predicted), most confident first",
                     lay.plot("confused_pairs.png"), empty=f"no misclassified images among {len(y)}")
