"""What is submitted: the probabilities (finalize: temperature -> class prior for unreadable images -> clip, the one
place this happens, for validation scores and for the CSV alike), and the CSV itself (build, validate against
the sample submission, write atomically).

Two formats (dataset.submission):
  probability  id,label with label = P(classes[1]) in [clip, 1 - clip]   (Dogs vs Cats: P(dog))
  class_name   id,label with label = the predicted class name             (CIFAR-10)
Ids are integers, each exactly once, in numeric order (1, 2, ..., 10, not 1, 10, 100).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import UserError
from .files import atomic_path


class SubmissionError(UserError):
    """The CSV would not be accepted by Kaggle (or would be silently misaligned)."""


def build(ids: Sequence[int], probs: np.ndarray, classes: Sequence[str], kind: str) -> pd.DataFrame:
    """Map each prediction to its id explicitly and sort by id as a number."""
    ids = np.asarray(ids)
    probs = np.asarray(probs, dtype=np.float64)
    if len(ids) != len(probs):
        raise SubmissionError(f"{len(ids)} ids but {len(probs)} predictions; they must pair up one to one")
    if kind == "probability":
        if probs.ndim == 2:
            probs = probs[:, 1]
        label: object = probs
    elif kind == "class_name":
        if probs.ndim != 2 or probs.shape[1] != len(classes):
            raise SubmissionError(f"class_name submission needs one probability per class ({len(classes)}), got shape {probs.shape}")
        finite = np.isfinite(probs).all(axis=1)
        if not finite.all():  # argmax would turn a NaN row into a confident-looking class name
            raise SubmissionError(f"id {ids[~finite][0]}: predicted probabilities {probs[~finite][0].tolist()} are not "
                                  "finite; the model diverged or the input was broken")
        label = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    else:
        raise SubmissionError(f"unknown submission format {kind!r}; expected probability or class_name")
    df = pd.DataFrame({"id": ids, "label": label})
    return df.sort_values("id", kind="stable").reset_index(drop=True)


def validate(df: pd.DataFrame, kind: str, classes: Sequence[str], clip: float | None = None,
             sample: str | Path | None = None) -> None:
    """Refuse anything Kaggle would reject or score wrongly; raise SubmissionError naming the problem."""
    if list(df.columns) != ["id", "label"]:
        raise SubmissionError(f"columns are {list(df.columns)}; expected exactly ['id', 'label']")
    if df.empty:
        raise SubmissionError("the submission has no rows")
    ids = pd.to_numeric(df["id"], errors="coerce")
    if ids.isna().any() or not np.all(np.mod(ids, 1) == 0):
        bad = df["id"][ids.isna() | (np.mod(ids.fillna(0), 1) != 0)].iloc[0]
        raise SubmissionError(f"id {bad!r} is not an integer")
    ids = ids.astype(np.int64)
    if ids.duplicated().any():
        raise SubmissionError(f"id {int(ids[ids.duplicated()].iloc[0])} appears more than once")
    if not ids.is_monotonic_increasing:
        raise SubmissionError("ids are not in numeric order")
    if kind == "probability":
        p = pd.to_numeric(df["label"], errors="coerce")
        if p.isna().any() or not np.all(np.isfinite(p)):
            raise SubmissionError(f"label {df['label'][p.isna() | ~np.isfinite(p.fillna(0))].iloc[0]!r} is not a finite probability")
        lo, hi = (clip, 1 - clip) if clip is not None else (0.0, 1.0)
        if (p < lo).any() or (p > hi).any():
            raise SubmissionError(f"probability {float(p[(p < lo) | (p > hi)].iloc[0])} is outside [{lo}, {hi}]")
    else:
        bad = ~df["label"].isin(list(classes))
        if bad.any():
            raise SubmissionError(f"label {df['label'][bad].iloc[0]!r} is not a class name ({', '.join(classes)})")
    if sample is not None and Path(sample).is_file():
        from .rawdata import read_sample_ids

        sample_ids = np.sort(np.asarray(read_sample_ids(Path(sample)), dtype=np.int64))
        if len(sample_ids) != len(ids):
            raise SubmissionError(f"{len(ids)} rows but {Path(sample).name} has {len(sample_ids)}")
        if not np.array_equal(sample_ids, ids.to_numpy()):
            diff = sorted(set(sample_ids.tolist()) ^ set(ids.tolist()))[:5]
            raise SubmissionError(f"ids differ from {Path(sample).name} (e.g. {diff})")


def write(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically; floats in full precision so the file reads back exactly."""
    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format=None)
    return path


def clip_probabilities(p: np.ndarray, clip: float) -> np.ndarray:
    """Clip to [clip, 1 - clip]; for several classes renormalise each row (as Kaggle's scorer does)."""
    p = np.clip(np.asarray(p, dtype=np.float64), clip, 1 - clip)
    if p.ndim == 2:
        p = p / p.sum(axis=1, keepdims=True)
    return p


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """Divide the model's logits by `temperature` (> 1 softens over-confident probabilities, < 1 sharpens):
    sigmoid(logit(p) / T) for P(class 1), softmax(log p / T) for rows of class probabilities."""
    p = np.asarray(p, dtype=np.float64)
    if temperature == 1.0:
        return p
    q = np.clip(p, 1e-15, 1 - 1e-15)
    if q.ndim == 1:
        return 1.0 / (1.0 + np.exp(-(np.log(q) - np.log1p(-q)) / temperature))
    z = np.log(q) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def finalize(p: np.ndarray, temperature: float, clip: float, prior: np.ndarray | None = None,
             unreadable: np.ndarray | None = None) -> np.ndarray:
    """The model's probabilities -> the submitted ones: the temperature, then the class prior (over the training
    labels) for the images that could not be read, then the clip. Evaluate scores validation on exactly this."""
    p = apply_temperature(p, temperature).copy()
    if unreadable is not None and unreadable.any():
        p[unreadable] = prior[1] if p.ndim == 1 else prior
    return clip_probabilities(p, clip)


def class_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The share of each class among the labelled images."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes) / len(labels)
