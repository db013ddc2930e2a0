"""tf.data input pipelines built from prepare's manifests and uint8 image arrays.

Images were decoded and resized once, in parallel, by prepare (train.npy/test.npy); validation and test
images stream from those files in chunks (bounded memory whatever the dataset size), deterministic and in
manifest order. The training pipeline maps train.npy into memory (the page cache is the cache), then each
epoch shuffles the row numbers (seeded) and gathers whole batches from it, and prefetches; random
augmentation runs inside the model (Keras preprocessing layers, see src/models/layers.py), on the accelerator.

Batches are (uint8 images [B, H, W, 3], float32 labels): [B, 1] for two classes (P(class 1)),
one-hot [B, K] for more.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from .errors import UserError
from .manifests import Manifests

AUTOTUNE = tf.data.AUTOTUNE


def _generator(npy: Path, indices: np.ndarray, labels: np.ndarray | None, chunk: int, shard: tuple[int, int] | None):
    def gen():
        for s in range(0, len(indices), chunk):
            rows, y = indices[s:s + chunk], labels[s:s + chunk] if labels is not None else None
            if shard is not None:
                part, weight = shard_rows(len(rows), *shard)
                yield _read_rows(npy, rows[part]), y[part], weight
                continue
            x = _read_rows(npy, rows)
            yield (x, y) if y is not None else x
    return gen


def shard_rows(n: int, index: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Process `index` of `count`'s part of a batch of n rows (positions, sample weights): equal parts, the last
    padded with copies of the batch's last row weighted 0 when n does not divide (every process must feed as many
    rows as the others)."""
    k = -(-n // count)
    pos = np.arange(index * k, (index + 1) * k)
    return np.minimum(pos, n - 1), (pos < n).astype(np.float32)


def _source(npy: Path, indices: np.ndarray, labels: np.ndarray | None, shape: tuple[int, ...], chunk: int,
            shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    img_spec = tf.TensorSpec((None, *shape), tf.uint8)
    if labels is None:
        sig = img_spec
    else:
        sig = (img_spec, tf.TensorSpec((None, *labels.shape[1:]), tf.float32))
        if shard is not None:
            sig = (*sig, tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.from_generator(_generator(npy, indices, labels, chunk, shard), output_signature=sig)
    return ds.apply(tf.data.experimental.assert_cardinality(-(-len(indices) // chunk)))


def encode_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if num_classes == 2:
        return labels.astype(np.float32)[:, None]
    return np.eye(num_classes, dtype=np.float32)[labels]


def _empty_aligned(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """np.empty on a 64-byte boundary, so TensorFlow can use the buffer as it is (no copy into an aligned buffer)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(nbytes + align, dtype=np.uint8)
    start = (-buf.ctypes.data) % align
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def map_rows(npy: Path) -> np.ndarray:
    """A read-only view of a .npy array's rows backed by the page cache (mmap), with every page mapped at once.

    MAP_POPULATE maps the whole file in one call (the pages are usually resident already: prepare just wrote them,
    or an earlier epoch read them), instead of one page fault per 4 KiB on first touch, which is what makes a plain
    memory map or a copy into fresh memory slow to start (~0.4 s per 135 MB here, ~15x the populate). When the
    file is larger than half the available memory it is mapped without populating (pages come in as read)."""
    header = np.load(npy, mmap_mode="r")
    if not isinstance(header, np.memmap) or not header.flags.c_contiguous:
        return np.asarray(header)
    flags = mmap.MAP_SHARED
    size = os.path.getsize(npy)
    if hasattr(mmap, "MAP_POPULATE") and size < _available_memory() // 2:
        flags |= mmap.MAP_POPULATE
    with open(npy, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    return np.ndarray(header.shape, header.dtype, buffer=mm, offset=header.offset)


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _read_rows(npy: Path, rows: np.ndarray) -> np.ndarray:
    """Rows of a .npy array, in the given order, read with one plain file read per run of consecutive rows.

    Cheaper than faulting a memory map's pages in one by one, and the pages read do not stay mapped
    into the process (streaming a large array keeps its resident memory flat)."""
    arr = np.load(npy, mmap_mode="r")
    out = _empty_aligned((len(rows), *arr.shape[1:]), arr.dtype)
    if not len(rows):
        return out
    if not (isinstance(arr, np.memmap) and arr.flags.c_contiguous):
        out[:] = arr[rows]
        return out
    row_bytes = arr.strides[0]
    buf = memoryview(out.reshape(-1).view(np.uint8))
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    with open(npy, "rb") as f:
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
            f.seek(arr.offset + int(rows[a]) * row_bytes)
            want = (b - a) * row_bytes
            if f.readinto(buf[a * row_bytes:b * row_bytes]) != want:
                raise UserError(f"{npy}: shorter than its header says; run prepare again")
    return out


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _beta(shape, alpha: float, seed) -> tf.Tensor:
    """Beta(alpha, alpha) samples, stateless: g1 / (g1 + g2) with g ~ Gamma(alpha)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    g1 = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    g2 = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    return g1 / (g1 + g2)


def mix_batch(x: tf.Tensor, y: tf.Tensor, key: tf.Tensor, seed: int, mixup: float, cutmix: float):
    """MixUp (each image blended with another of the batch, weight ~ Beta(mixup, mixup)) or CutMix (a box of
    another image pasted in, area ~ Beta(cutmix, cutmix)); with both on, each batch takes one at random.
    Labels are mixed in the same proportions. Stateless: the draws depend on (seed, key) only, key being the
    batch's global step, so a resumed run mixes exactly as an uninterrupted one. Returns float32 images."""
    s = tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), tf.cast(key, tf.int64)]), 5)
    x = tf.cast(x, tf.float32)
    n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    perm = tf.random.experimental.stateless_shuffle(tf.range(n), seed=s[0])
    xp, yp = tf.gather(x, perm), tf.gather(y, perm)

    def do_mixup():
        lam = _beta([n], mixup, s[1])
        lx = tf.reshape(lam, [-1, 1, 1, 1])
        ly = tf.reshape(lam, [-1] + [1] * (len(y.shape) - 1))
        return lx * x + (1 - lx) * xp, ly * y + (1 - ly) * yp

    def do_cutmix():
        lam = _beta([], cutmix, s[2])
        cut = tf.sqrt(1.0 - lam)
        ch, cw = tf.cast(cut * tf.cast(h, tf.float32), tf.int32), tf.cast(cut * tf.cast(w, tf.float32), tf.int32)
        centre = tf.random.stateless_uniform([2], s[3])
        cy, cx = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32), tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
        y0, y1 = tf.clip_by_value(cy - ch // 2, 0, h), tf.clip_by_value(cy + ch - ch // 2, 0, h)
        x0, x1 = tf.clip_by_value(cx - cw // 2, 0, w), tf.clip_by_value(cx + cw - cw // 2, 0, w)
        rows, cols = tf.range(h), tf.range(w)
        box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
        kept = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(h * w, tf.float32)
        return tf.where(box[None, :, :, None], xp, x), kept * y + (1 - kept) * yp

    if mixup > 0 and cutmix > 0:
        return tf.cond(tf.random.stateless_uniform([], s[4]) < 0.5, do_mixup, do_cutmix)
    return do_mixup() if mixup > 0 else do_cutmix()


def train_dataset(m: Manifests, batch_size: int, seed: int, df: pd.DataFrame | None = None,
                  drop_remainder: bool = False, first_epoch: int | None = None, mixup: float = 0.0,
                  cutmix: float = 0.0, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """The training pipeline: shuffled (seeded, a new order every epoch), batched, prefetched.

    Its cache is train.npy itself, decoded once by prepare and memory-mapped with all its pages at once (map_rows:
    the operating system's page cache holds it, shared, never copied whole). Each epoch shuffles the row numbers
    of the whole training set and every batch is one numpy gather of its rows in parallel tf.data map calls,
    with no per-image work and no shuffle buffer.

    first_epoch=None: one epoch, in a new seeded order each time the dataset is iterated. first_epoch=k: an
    endless stream of epochs k, k+1, ... (take steps_per_epoch(...) batches per epoch; no batch straddles two),
    epoch e in an order that depends on (seed, e) only, so a run resumed at epoch k sees exactly the batches an
    uninterrupted run would have. mixup/cutmix > 0 (Beta parameters; epoch streams only) mix each batch
    (mix_batch). shard=(i, n): process i of a job of n (src/multiprocess.py) yields the i-th of n equal parts of
    every batch (whole batches only, drop_remainder): the job's global batches are one process's batches.
    """
    if (mixup or cutmix) and first_epoch is None:
        raise ValueError("mixup/cutmix need an epoch stream (first_epoch=...): their draws are keyed by the step")
    if shard is not None and (not drop_remainder or batch_size % shard[1]):
        raise ValueError("a sharded training stream needs whole batches (drop_remainder) that split evenly")
    df = m.train if df is None else df
    bs, n = int(batch_size), len(df)
    y = encode_labels(df["label"].to_numpy(), m.num_classes)
    index = df["index"].to_numpy()
    images = map_rows(m.train_images)
    b = bs if drop_remainder else None
    part = slice(None) if shard is None else slice(shard[0] * bs // shard[1], (shard[0] + 1) * bs // shard[1])
    b = b if shard is None else bs // shard[1]

    def gather(i: np.ndarray):  # numpy releases the GIL while it copies, so parallel calls run in parallel
        i = i[part]
        return images[index[i]], y[i]

    def batch(i):
        x, labels = tf.numpy_function(gather, [i], (tf.uint8, tf.float32), stateful=False)
        return tf.ensure_shape(x, (b, *m.image_shape)), tf.ensure_shape(labels, (b, *y.shape[1:]))

    if first_epoch is None:
        ds = tf.data.Dataset.range(n).shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(bs, drop_remainder=drop_remainder)
    else:
        def epoch_order(e):
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                             seed=tf.stack([tf.constant(seed, tf.int64), e]))
            return tf.data.Dataset.from_tensor_slices(order).batch(bs, drop_remainder=drop_remainder)

        ds = tf.data.Dataset.counter(int(first_epoch)).flat_map(epoch_order)
    ds = ds.map(batch, num_parallel_calls=AUTOTUNE)
    return _mixed(ds, steps_per_epoch(n, bs, drop_remainder), first_epoch, seed, mixup, cutmix).prefetch(AUTOTUNE)


def _mixed(ds: tf.data.Dataset, steps: int, first_epoch: int | None, seed: int, mixup: float, cutmix: float):
    if not (mixup or cutmix):
        return ds
    start = int(first_epoch) * steps  # the global step of the stream's first batch: epoch e, step s -> e * steps + s
    return ds.enumerate(start).map(lambda k, xy: mix_batch(xy[0], xy[1], k, seed, float(mixup), float(cutmix)),
                                   num_parallel_calls=AUTOTUNE)


def eval_dataset(m: Manifests, df: pd.DataFrame, batch_size: int, npy: Path, labelled: bool = True,
                 flip: bool = False, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Deterministic pipeline in manifest order, read in chunks (flat memory for any size); flip=True mirrors
    every image. shard=(i, n), labelled: process i's part of every batch, with sample weights (shard_rows)."""
    y = encode_labels(df["label"].to_numpy(), m.num_classes) if labelled else None
    ds = _source(npy, df["index"].to_numpy(), y, m.image_shape, batch_size, shard if labelled else None)
    if flip:
        ds = ds.map(lambda *t: (tf.reverse(t[0], axis=[2]), *t[1:]) if len(t) > 1 else tf.reverse(t[0], axis=[2]),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def val_dataset(m: Manifests, batch_size: int, flip: bool = False,
                shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """The validation images with their labels, streamed from train.npy every time (never cached in memory: at
    Kaggle size the validation fold alone is 5,000 x 150x150x3 = 337 MB; its rows come from the page cache)."""
    return eval_dataset(m, m.val, batch_size, m.train_images, labelled=True, flip=flip, shard=shard)


def test_dataset(m: Manifests, batch_size: int, flip: bool = False) -> tf.data.Dataset:
    return eval_dataset(m, m.test, batch_size, m.test_images, labelled=False, flip=flip)
