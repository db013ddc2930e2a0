"""The validation split (src/split.py): stable, seeded, stratified and incremental. The same ids always get the same
fold (whatever order they are listed in, in another processed folder, on another run); another dataset.split_seed
gives another split with the same per-class counts; round(val_fraction * n) of each class is validation; adding
images moves old ones only at each class's hash boundary, at most one per new image. Checked on assign_folds
directly (2,000 ids) and through prepare. No TensorFlow here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import checked, path_overrides
from imagegen import dogs_vs_cats
from src import prepare
from src.split import assign_folds, unit_hash


def _cfg(base: Path, *extra: str):
    return checked("prepare", "dataset=dogs_vs_cats", "dataset.image_size=48", "prepare.workers=1",
                   "prepare.preview=false", *path_overrides(base), *extra)


def _folds(lay) -> dict[str, str]:
    train = pd.read_csv(lay.train_manifest, dtype={"id": str})
    return dict(zip(train["id"], train["fold"]))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    dogs_vs_cats(tmp_path / "raw" / "dogs_vs_cats", n_per_class=10, n_test=12)
    return tmp_path


def _check_only_boundary_moves(old: dict[str, str], new: dict[str, str], seed: int, added_per_class: dict[str, int]):
    """Old ids keep their fold except at each class's hash boundary; at most one per added image."""
    cls = lambda i: i.split(".")[0]  # noqa: E731
    for c, added in added_per_class.items():
        ids = [i for i in old if cls(i) == c]
        changed = [i for i in ids if old[i] != new[i]]
        assert len(changed) <= added, (c, changed)
        t_old = max(unit_hash(seed, i) for i in ids if old[i] == "val")
        t_new = max(unit_hash(seed, i) for i in new if cls(i) == c and new[i] == "val")
        lo, hi = min(t_old, t_new), max(t_old, t_new)
        assert all(lo <= unit_hash(seed, i) <= hi for i in changed)


def test_unit_hash_is_a_fixed_number_in_0_1():
    values = [unit_hash(s, k) for s in (0, 1) for k in ("cat.1", "cat.2", "1")]
    assert all(0 <= v < 1 for v in values) and len(set(values)) == len(values)
    assert unit_hash(0, "cat.1") == unit_hash(0, "cat.1")


def test_split_is_stable_across_runs_and_seeded(base: Path, tmp_path_factory):
    lay = prepare.run(_cfg(base))
    a = _folds(lay)
    assert sum(v == "val" for v in a.values()) == 4  # stratified: round(0.2 * 10) = 2 of each class
    assert pd.read_csv(lay.train_manifest).query("fold == 'val'")["class"].value_counts().to_dict() == {"cat": 2, "dog": 2}
    other = tmp_path_factory.mktemp("again")
    b = _folds(prepare.run(_cfg(base, f"paths.processed={other}")))
    assert a == b
    c = _folds(prepare.run(_cfg(base, f"paths.processed={other}", "dataset.split_seed=7")))
    assert c != a  # another split_seed, another split (same per-class counts)
    assert sum(v == "val" for v in c.values()) == sum(v == "val" for v in a.values())


def test_new_images_do_not_reshuffle_old_ones(base: Path):
    lay = prepare.run(_cfg(base))
    old = _folds(lay)
    raw = base / "raw" / "dogs_vs_cats"
    rng = np.random.default_rng(5)
    for n in range(10, 13):  # three new cats and three new dogs
        for cls in ("cat", "dog"):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(raw / "train" / f"{cls}.{n}.jpg")
    prepare.run(_cfg(base))
    new = _folds(lay)
    assert len(new) == 26 and set(old) <= set(new)
    _check_only_boundary_moves(old, new, 0, {"cat": 3, "dog": 3})


def test_assign_folds_is_stratified_and_incremental_at_scale():
    ids = pd.Series([f"{c}.{n}" for c in ("cat", "dog") for n in range(1000)])
    labels = pd.Series([0] * 1000 + [1] * 1000)
    folds = assign_folds(ids, labels, 0.2, seed=3)
    assert ((folds == "val") & (labels == 0)).sum() == 200 and ((folds == "val") & (labels == 1)).sum() == 200
    np.testing.assert_array_equal(folds, assign_folds(ids, labels, 0.2, 3))
    # order of the rows does not matter, only the ids
    perm = np.random.default_rng(0).permutation(2000)
    shuffled = assign_folds(ids[perm].reset_index(drop=True), labels[perm].reset_index(drop=True), 0.2, 3)
    assert dict(zip(ids[perm], shuffled)) == dict(zip(ids, folds))
    # 100 new images per class: old ids move only at the boundary, at most one per new image
    ids2 = pd.concat([ids, pd.Series([f"{c}.{n}" for c in ("cat", "dog") for n in range(1000, 1100)])], ignore_index=True)
    labels2 = pd.concat([labels, pd.Series([0] * 100 + [1] * 100)], ignore_index=True)
    folds2 = assign_folds(ids2, labels2, 0.2, seed=3)
    old, new = dict(zip(ids, folds)), dict(zip(ids2, folds2))
    _check_only_boundary_moves(old, new, 3, {"cat": 100, "dog": 100})
    moved = sum(old[i] != new[i] for i in old)
    assert moved <= 60, f"{moved} of 2000 old images changed fold"


def test_every_class_with_two_images_keeps_one_of_each_fold():
    ids = pd.Series(["a.1", "a.2", "b.1", "b.2", "b.3", "c.1"])
    labels = pd.Series([0, 0, 1, 1, 1, 2])
    folds = assign_folds(ids, labels, 0.01, seed=0)  # rounds to 0 validation images: at least one is kept
    assert sorted(folds[:2]) == ["train", "val"] and list(folds[2:5]).count("val") == 1
    assert folds[5] == "train"  # a class of one image never loses it to validation
    folds = assign_folds(ids, labels, 0.99, seed=0)  # rounds to all: at least one stays for training
    assert sorted(folds[:2]) == ["train", "val"] and list(folds[2:5]).count("train") == 1
