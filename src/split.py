"""The split: which training images are validation, decided by a hash of each image's id.

Within each class, the images with the smallest hash of (dataset.split_seed, id) are validation. Stratified and
seeded; the same ids always get the same fold, whatever order they are listed in or how often the code runs,
and adding images moves at most a few images at each class's boundary (never reshuffles the old ones).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def unit_hash(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_folds(ids: pd.Series, labels: pd.Series, val_fraction: float, seed: int) -> np.ndarray:
    """'train' or 'val' for each image: round(val_fraction * n) of each class's n images are 'val' (at least one
    and never all of a class that has two or more)."""
    h = np.array([unit_hash(seed, str(i)) for i in ids])
    folds = np.full(len(ids), "train", dtype=object)
    labels = np.asarray(labels)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        n_val = min(max(int(round(val_fraction * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
        folds[idx[np.argsort(h[idx], kind="stable")[:n_val]]] = "val"
    return folds


def assign_cv_folds(ids: pd.Series, labels: pd.Series, folds: int, seed: int) -> np.ndarray:
    """The cross-validation fold (0..folds-1) of each image: within each class the images are ordered by
    hash(seed, id) and cut into `folds` equal runs, so every fold holds each class's share to within one image.
    Fold 0 is (to within one image per class) the validation fold of dataset.val_fraction = 1/folds. Adding m
    images to a class moves at most m of its old images across each boundary, each to a neighbouring fold."""
    h = np.array([unit_hash(seed, str(i)) for i in ids])
    out = np.zeros(len(ids), dtype=np.int64)
    labels = np.asarray(labels)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rank = np.empty(len(idx), dtype=np.int64)
        rank[np.argsort(h[idx], kind="stable")] = np.arange(len(idx))
        out[idx] = rank * folds // len(idx)
    return out
