"""The tf.data input pipelines (src/data.py) over prepare's manifests and image arrays. Batch shapes and dtypes (uint8
images, float32 labels: [B, 1] for two classes, one-hot for more), every image once an epoch with its own label,
seeded shuffling that reshuffles each epoch, epoch streams whose epoch e depends on (seed, e) only (what makes
resume exact), validation and test pipelines in manifest order (cached or not), flips, and MixUp/CutMix (labels
mixed in the images' proportions, stateless per step). Images are identified by their pixels, so order checks are
exact.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import checked, path_overrides
from imagegen import cifar, dogs_vs_cats
from src import manifests, prepare

tf = pytest.importorskip("tensorflow")
from src.data import encode_labels, map_rows, steps_per_epoch, train_dataset, val_dataset  # noqa: E402
from src.data import test_dataset as make_test_dataset  # noqa: E402  (not a pytest test)

SIZE = 48


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    base = tmp_path_factory.mktemp("binary")
    dogs_vs_cats(base / "raw" / "dogs_vs_cats", n_per_class=10, n_test=12)
    lay = prepare.run(checked("prepare", "dataset=dogs_vs_cats", f"dataset.image_size={SIZE}", "prepare.workers=1",
                              *path_overrides(base)))
    return manifests.load(lay)


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    base = tmp_path_factory.mktemp("three")
    classes = ["airplane", "automobile", "bird"]
    cifar(base / "raw" / "cifar10", n_per_class=6, n_test=5, classes=classes)
    lay = prepare.run(checked("prepare", "dataset=cifar10", f"dataset.classes=[{','.join(classes)}]",
                              "dataset.val_fraction=0.34", "prepare.workers=1", *path_overrides(base)))
    return manifests.load(lay)


def _images(m, split="train"):
    return np.load(m.train_images if split == "train" else m.test_images)


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


def test_epoch_stream_depends_on_seed_and_epoch_only(binary):
    """first_epoch=k: endless epochs k, k+1, ...; epoch e's batches are the same whichever epoch the stream
    started at (what makes a resumed run train on exactly what an uninterrupted one would)."""
    m = binary
    steps = steps_per_epoch(len(m.train), 5)
    assert steps == 4  # 16 images: 5, 5, 5, 1 (no batch straddles two epochs)

    def epochs(first: int, n: int) -> list[list[int]]:
        it = iter(train_dataset(m, batch_size=5, seed=7, first_epoch=first))
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
    again = val_dataset(m, batch_size=3)  # what training validates on after every epoch: the same each time
    for _ in range(2):
        xc, yc = _epoch(again)
        np.testing.assert_array_equal(xc, x)
        np.testing.assert_array_equal(yc, y)
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


def test_manifests_and_the_mapped_rows(binary, three):
    m = binary
    assert m.classes == ["cat", "dog"] and m.num_classes == 2 and m.image_shape == (SIZE, SIZE, 3)
    assert len(m.train) == 16 and len(m.val) == 4 and (m.train["fold"] == "train").all() and (m.val["fold"] == "val").all()
    assert sorted(m.labels().tolist()) == [0] * 10 + [1] * 10
    fp = m.fingerprint()  # which data a run saw: the same files, the same text; other data, another
    assert fp == m.fingerprint() and int(fp, 16) >= 0 and len(fp) == 8 * (len(m.files) + 1)
    assert three.fingerprint() != fp and {m.train_images.parent / "train.csv", m.train_images.parent / "classes.json"} <= set(m.files)
    rows = map_rows(m.train_images)
    assert not rows.flags.writeable
    np.testing.assert_array_equal(rows, _images(m))
    assert steps_per_epoch(16, 5) == 4 and steps_per_epoch(16, 5, drop_remainder=True) == 3


def _constant_batch(n: int = 8, size: int = 6):
    """Image i is filled with the value 10 * (i + 1); labels alternate 0/1 (binary)."""
    x = np.repeat(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None] * 10, size * size * 3).reshape(n, size, size, 3)
    y = (np.arange(n) % 2).astype(np.float32)[:, None]
    return tf.constant(x.astype(np.uint8)), tf.constant(y)


def test_mixup_blends_images_and_labels_in_the_same_proportion():
    from src.data import mix_batch

    x, y = _constant_batch()
    mx, my = (t.numpy() for t in mix_batch(x, y, tf.constant(3, tf.int64), seed=1, mixup=0.4, cutmix=0.0))
    assert mx.dtype == np.float32 and mx.shape == x.shape and my.shape == y.shape
    values = x.numpy()[:, 0, 0, 0].astype(np.float64)
    for img, lab in zip(mx, my[:, 0]):
        v = float(img[0, 0, 0])
        assert np.allclose(img, v)  # a blend of two constant images is constant
        # v = lam * a + (1 - lam) * b and lab = lam * ya + (1 - lam) * yb for some pair (a, b) of the batch
        ok = False
        for a in range(8):
            for b in range(8):
                if values[a] != values[b]:
                    lam = (v - values[b]) / (values[a] - values[b])
                    ok |= -1e-4 <= lam <= 1 + 1e-4 and abs(lab - (lam * (a % 2) + (1 - lam) * (b % 2))) < 1e-4
                elif abs(v - values[a]) < 1e-3:
                    ok |= abs(lab - (a % 2)) < 1e-4
        assert ok, (v, lab)
    again = mix_batch(x, y, tf.constant(3, tf.int64), seed=1, mixup=0.4, cutmix=0.0)[0].numpy()
    other = mix_batch(x, y, tf.constant(4, tf.int64), seed=1, mixup=0.4, cutmix=0.0)[0].numpy()
    np.testing.assert_array_equal(mx, again)  # stateless: the same (seed, step) mixes the same way
    assert not np.array_equal(mx, other)


def test_cutmix_pastes_a_box_and_shares_the_label_by_area():
    from src.data import mix_batch

    x, y = _constant_batch(size=10)
    values = x.numpy()[:, 0, 0, 0]
    seen_box = False
    for key in range(6):
        mx, my = (t.numpy() for t in mix_batch(x, y, tf.constant(key, tf.int64), seed=2, mixup=0.0, cutmix=1.0))
        for i, (img, lab) in enumerate(zip(mx, my[:, 0])):
            own = img[..., 0] == values[i]
            others = set(np.unique(img[..., 0][~own]).tolist())
            assert len(others) <= 1  # one donor image
            if others:
                seen_box = True
                donor = int(np.flatnonzero(values == others.pop())[0])
                kept = own.mean()
                np.testing.assert_allclose(lab, kept * (i % 2) + (1 - kept) * (donor % 2), atol=1e-5)
                rows, cols = np.nonzero(~own)  # the pasted pixels form one rectangle
                assert (~own)[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            else:
                assert lab == i % 2 or np.isclose(lab, i % 2)
    assert seen_box


def test_mixed_epoch_stream_resumes_identically(binary):
    m = binary
    steps = steps_per_epoch(len(m.train), 4)
    kw = dict(batch_size=4, seed=3, mixup=0.3, cutmix=1.0)
    it = iter(train_dataset(m, first_epoch=0, **kw))
    epoch0 = [next(it) for _ in range(steps)]
    epoch1 = [next(it) for _ in range(steps)]
    resumed = iter(train_dataset(m, first_epoch=1, **kw))
    for (x, y), (rx, ry) in zip(epoch1, [next(resumed) for _ in range(steps)]):
        np.testing.assert_array_equal(x.numpy(), rx.numpy())
        np.testing.assert_array_equal(y.numpy(), ry.numpy())
    assert x.dtype == tf.float32
    assert any(not np.isin(b[1].numpy(), [0.0, 1.0]).all() for b in epoch0 + epoch1)  # labels were mixed
    with pytest.raises(ValueError, match="epoch stream"):
        train_dataset(m, batch_size=4, seed=3, mixup=0.3)
