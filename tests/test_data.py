"""tf.data pipelines (issue 2/3): batch shapes and dtypes, label encoding, seeded shuffling, order-keeping
validation/test pipelines, flips. Images are identified by their pixels, so order checks are exact."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import compose, path_overrides
from imagegen import cifar, dogs_vs_cats
from src.prepare import prepare

tf = pytest.importorskip("tensorflow")
from src.data import encode_labels, load_manifests, steps_per_epoch, train_dataset, val_dataset  # noqa: E402
from src.data import test_dataset as make_test_dataset  # noqa: E402  (not a pytest test)

SIZE = 48


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    base = tmp_path_factory.mktemp("binary")
    dogs_vs_cats(base / "raw" / "dogs_vs_cats", n_per_class=10, n_test=12)
    out = prepare(compose("dataset=dogs_vs_cats", f"dataset.image_size={SIZE}", "prepare.workers=1",
                          *path_overrides(base)))
    return load_manifests(out)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    base = tmp_path_factory.mktemp("three")
    classes = ["airplane", "automobile", "bird"]
    cifar(base / "raw" / "cifar10", n_per_class=6, n_test=5, classes=classes)
    out = prepare(compose("dataset=cifar10", f"dataset.classes=[{','.join(classes)}]", "dataset.val_fraction=0.34",
                          "prepare.workers=1", *path_overrides(base)))
    return load_manifests(out)


def _images(m, split="train"):
    return np.load(m.processed / f"{split}.npy")


def _key(img: np.ndarray) -> bytes:
    return np.ascontiguousarray(img).tobytes()


def _epoch(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _order(m, ds) -> list[int]:
    """The manifest indices of one epoch's images, in the order the pipeline gave them."""
    row_of = {_key(img): i for i, img in enumerate(_images(m))}
    x, _ = _epoch(ds)
    return [row_of[_key(img)] for img in x]


def test_binary_train_batches(binary):
    m = binary
    ds = train_dataset(m, batch_size=8, seed=1)
    x, y = next(iter(ds))
    assert x.dtype == tf.uint8 and tuple(x.shape) == (8, SIZE, SIZE, 3)
    assert y.dtype == tf.float32 and tuple(y.shape) == (8, 1)
    xs, ys = _epoch(ds)
    assert len(xs) == len(m.train) == 16
    # every image comes once, with its own label
    arr = _images(m)
    label_of = {_key(arr[i]): lab for i, lab in zip(m.train["index"], m.train["label"])}
    assert sorted(label_of) == sorted(_key(v) for v in xs)
    assert [label_of[_key(v)] for v in xs] == ys[:, 0].astype(int).tolist()
    assert set(np.unique(ys)) == {0.0, 1.0}
    # drop_remainder keeps only whole batches
    assert [int(b[0].shape[0]) for b in train_dataset(m, 6, seed=1, drop_remainder=True)] == [6, 6]


def test_multiclass_labels_are_one_hot(three):
    m = three
    assert m.num_classes == 3
    x, y = next(iter(train_dataset(m, batch_size=4, seed=0)))
    assert x.dtype == tf.uint8 and tuple(x.shape) == (4, 32, 32, 3)
    assert y.dtype == tf.float32 and tuple(y.shape) == (4, 3)
    xs, ys = _epoch(train_dataset(m, batch_size=4, seed=0))
    np.testing.assert_array_equal(ys.sum(axis=1), 1.0)
    arr = _images(m)
    label_of = {_key(arr[i]): lab for i, lab in zip(m.train["index"], m.train["label"])}
    assert [label_of[_key(v)] for v in xs] == ys.argmax(axis=1).tolist()
    np.testing.assert_array_equal(encode_labels(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(encode_labels(np.array([1, 0]), 2), [[1.0], [0.0]])


def test_shuffle_is_seeded_and_reshuffles_each_epoch(binary):
    m = binary
    a = train_dataset(m, batch_size=5, seed=123)
    first = _order(m, a)
    assert first == _order(m, train_dataset(m, batch_size=5, seed=123))  # same seed: same first epoch
    second = _order(m, a)
    assert sorted(second) == sorted(first) and second != first           # next epoch: another order
    assert _order(m, train_dataset(m, batch_size=5, seed=124)) != first
    assert first != sorted(first)                                         # it is shuffled at all


@pytest.mark.parametrize("cache", [True, False])
def test_epoch_stream_depends_on_seed_and_epoch_only(binary, cache):
    """first_epoch=k: endless epochs k, k+1, ...; epoch e's batches are the same whichever epoch the stream
    started at (what makes a resumed run train on exactly what an uninterrupted one would)."""
    m = binary
    steps = steps_per_epoch(len(m.train), 5)
    assert steps == 4  # 16 images: 5, 5, 5, 1 (no batch straddles two epochs)

    def epochs(first: int, n: int) -> list[list[int]]:
        it = iter(train_dataset(m, batch_size=5, seed=7, cache=cache, first_epoch=first))
        out = []
        for _ in range(n):
            batches = [next(it) for _ in range(steps)]
            assert [int(b[0].shape[0]) for b in batches] == [5, 5, 5, 1]
            out.append(_order(m, batches))
        return out

    e0, e1, e2 = epochs(0, 3)
    assert sorted(e0) == sorted(e1) == sorted(e2) == sorted(_order(m, train_dataset(m, 16, seed=7)))
    assert len({tuple(e0), tuple(e1), tuple(e2)}) == 3  # a new order every epoch
    assert epochs(1, 2) == [e1, e2]                    # started at epoch 1: the same epochs 1 and 2
    assert epochs(2, 1) == [e2]


def test_validation_and_test_keep_manifest_order(binary):
    m = binary
    arr, tarr = _images(m), _images(m, "test")
    x, y = _epoch(val_dataset(m, batch_size=3))
    np.testing.assert_array_equal(x, arr[m.val["index"].to_numpy()])
    np.testing.assert_array_equal(y[:, 0], m.val["label"].to_numpy())
    x2, _ = _epoch(val_dataset(m, batch_size=3))
    np.testing.assert_array_equal(x, x2)
    batches = [b.numpy() for b in make_test_dataset(m, batch_size=5)]
    assert [len(b) for b in batches] == [5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(batches), tarr[m.test["index"].to_numpy()])
    assert m.test["id"].tolist() == list(range(1, 13))


def test_flip_mirrors_images_horizontally(binary):
    m = binary
    arr, tarr = _images(m), _images(m, "test")
    x, y = _epoch(val_dataset(m, batch_size=4, flip=True))
    np.testing.assert_array_equal(x, arr[m.val["index"].to_numpy()][:, :, ::-1, :])
    np.testing.assert_array_equal(y[:, 0], m.val["label"].to_numpy())
    t = np.concatenate([b.numpy() for b in make_test_dataset(m, batch_size=4, flip=True)])
    np.testing.assert_array_equal(t, tarr[m.test["index"].to_numpy()][:, :, ::-1, :])
    assert not np.array_equal(t, tarr[m.test["index"].to_numpy()])
