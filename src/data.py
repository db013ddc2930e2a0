"""tf.data input pipelines built from prepare's manifests and uint8 image arrays.

Images were decoded and resized once, in parallel, by prepare (train.npy/test.npy); here they stream
from the memory-mapped arrays in chunks (bounded memory whatever the dataset size). The training
pipeline caches the decoded images, then shuffles (seeded), batches and prefetches; random
augmentation runs inside the model (Keras preprocessing layers, see models.py), on the accelerator.
Validation and test pipelines are deterministic and keep manifest order.

Batches are (uint8 images [B, H, W, 3], float32 labels): [B, 1] for two classes (P(class 1)),
one-hot [B, K] for more.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from .common import UserError, file_sha256, read_json

AUTOTUNE = tf.data.AUTOTUNE
CHUNK = 512  # images read from the memory map per generator step


@dataclass
class Manifests:
    processed: Path
    train: pd.DataFrame  # fold == "train"
    val: pd.DataFrame    # fold == "val"
    test: pd.DataFrame
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        arr = np.load(self.processed / "train.npy", mmap_mode="r")
        return tuple(int(v) for v in arr.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A hash of the manifests and the class list: which data a run saw."""
        return file_sha256(self.processed / "train.csv")[:16] + file_sha256(self.processed / "test.csv")[:8]


def load_manifests(processed: str | Path) -> Manifests:
    processed = Path(processed)
    try:
        train = pd.read_csv(processed / "train.csv", dtype={"id": str})
        test = pd.read_csv(processed / "test.csv")
        classes = read_json(processed / "classes.json")
    except FileNotFoundError as e:
        raise UserError(f"{e.filename} not found; run python -m src.prepare first") from e
    return Manifests(processed, train[train["fold"] == "train"].reset_index(drop=True),
                     train[train["fold"] == "val"].reset_index(drop=True), test, classes)


def _generator(npy: Path, indices: np.ndarray, labels: np.ndarray | None, chunk: int):
    def gen():
        arr = np.load(npy, mmap_mode="r")
        for s in range(0, len(indices), chunk):
            idx = indices[s:s + chunk]
            x = np.ascontiguousarray(arr[idx])
            yield (x, labels[s:s + chunk]) if labels is not None else x
    return gen


def _source(npy: Path, indices: np.ndarray, labels: np.ndarray | None, shape: tuple[int, ...], chunk: int) -> tf.data.Dataset:
    img_spec = tf.TensorSpec((None, *shape), tf.uint8)
    if labels is None:
        sig = img_spec
    else:
        sig = (img_spec, tf.TensorSpec((None, *labels.shape[1:]), tf.float32))
    ds = tf.data.Dataset.from_generator(_generator(npy, indices, labels, chunk), output_signature=sig)
    return ds.apply(tf.data.experimental.assert_cardinality(-(-len(indices) // chunk)))


def encode_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if num_classes == 2:
        return labels.astype(np.float32)[:, None]
    return np.eye(num_classes, dtype=np.float32)[labels]


def train_dataset(m: Manifests, batch_size: int, seed: int, shuffle_buffer: int = 10000,
                  df: pd.DataFrame | None = None, cache: bool = True, drop_remainder: bool = False) -> tf.data.Dataset:
    """Cached, shuffled (seeded, reshuffled each epoch), batched, prefetched training pipeline."""
    df = m.train if df is None else df
    y = encode_labels(df["label"].to_numpy(), m.num_classes)
    ds = _source(m.processed / "train.npy", df["index"].to_numpy(), y, m.image_shape, CHUNK).unbatch()
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(df)))
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(min(shuffle_buffer, len(df)) or 1, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def eval_dataset(m: Manifests, df: pd.DataFrame, batch_size: int, split: str = "train", labelled: bool = True,
                 flip: bool = False, cache: bool = False) -> tf.data.Dataset:
    """Deterministic pipeline in manifest order (validation or test); flip=True mirrors every image."""
    y = encode_labels(df["label"].to_numpy(), m.num_classes) if labelled else None
    ds = _source(m.processed / f"{split}.npy", df["index"].to_numpy(), y, m.image_shape, batch_size)
    if flip:
        ds = ds.map(lambda *t: (tf.reverse(t[0], axis=[2]), *t[1:]) if len(t) > 1 else tf.reverse(t[0], axis=[2]),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    return ds.prefetch(AUTOTUNE)


def val_dataset(m: Manifests, batch_size: int, flip: bool = False) -> tf.data.Dataset:
    return eval_dataset(m, m.val, batch_size, "train", labelled=True, flip=flip, cache=not flip)


def test_dataset(m: Manifests, batch_size: int, flip: bool = False) -> tf.data.Dataset:
    return eval_dataset(m, m.test, batch_size, "test", labelled=False, flip=flip)
