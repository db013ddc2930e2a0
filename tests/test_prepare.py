"""prepare stage (issue 2): sizes, counts, manifests, the stable stratified split, incremental reruns,
resize modes, Kaggle archives, image conversions and skipped files. No TensorFlow here: fast."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, compose, path_overrides
from imagegen import dogs_vs_cats
from src.common import UserError
from src.prepare import _unit_hash, assign_folds, load_image, prepare

SIZE = 48


def cfg_for(base: Path, *extra: str):
    return compose("dataset=dogs_vs_cats", f"dataset.image_size={SIZE}", "prepare.workers=1", *path_overrides(base), *extra)


def raw_of(base: Path) -> Path:
    return base / "raw" / "dogs_vs_cats"


def manifests(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(out / "train.csv", dtype={"id": str}), pd.read_csv(out / "test.csv")


def folds_of(out: Path) -> dict[str, str]:
    train, _ = manifests(out)
    return dict(zip(train["id"], train["fold"]))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    dogs_vs_cats(raw_of(tmp_path), n_per_class=10, n_test=12)
    return tmp_path


# ------------------------------------------------------------------ outputs
def test_outputs_sizes_counts_and_manifests(base: Path):
    out = prepare(cfg_for(base))
    assert out == base / "processed" / "dogs_vs_cats"
    x, xt = np.load(out / "train.npy"), np.load(out / "test.npy")
    assert x.dtype == np.uint8 and x.shape == (20, SIZE, SIZE, 3)
    assert xt.dtype == np.uint8 and xt.shape == (12, SIZE, SIZE, 3)

    train, test = manifests(out)
    assert list(train.columns) == ["id", "path", "label", "class", "fold", "index"]
    assert list(test.columns) == ["id", "path", "index", "ok"]
    assert len(train) == 20 and train["id"].is_unique and sorted(train["index"]) == list(range(20))
    # the label index follows dataset.classes (cat=0, dog=1) and matches the file name
    for _, r in train.iterrows():
        assert r["class"] == Path(r["path"]).name.split(".")[0] == r["id"].split(".")[0]
        assert r["label"] == ["cat", "dog"].index(r["class"])
    assert (train["class"].value_counts() == 10).all()
    # stratified: round(0.2 * 10) = 2 validation images per class
    assert train[train["fold"] == "val"]["class"].value_counts().to_dict() == {"cat": 2, "dog": 2}
    assert set(train["fold"]) == {"train", "val"}
    # test ids in numeric order (10, 11, 12 after 9), each with its own file
    assert test["id"].tolist() == list(range(1, 13))
    assert [Path(p).name for p in test["path"]] == [f"{i}.jpg" for i in range(1, 13)]
    assert test["index"].tolist() == list(range(12)) and test["ok"].all()
    # the row named by `index` holds that file's resized pixels
    raw = raw_of(base)
    for _, r in train.sample(4, random_state=0).iterrows():
        np.testing.assert_array_equal(x[r["index"]], load_image(str(raw / r["path"]), SIZE))
    r = test[test["id"] == 10].iloc[0]
    np.testing.assert_array_equal(xt[r["index"]], load_image(str(raw / "test" / "10.jpg"), SIZE))

    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]
    report = json.loads((out / "report.json").read_text())
    assert (report["train_images"], report["val_images"], report["test_images"]) == (16, 4, 12)
    assert report["skipped_count"] == 0 and report["image_size"] == SIZE
    assert (out / "preview.png").is_file()


# ------------------------------------------------------------------ the split
def test_split_is_stable_across_runs_and_seeded(base: Path, tmp_path_factory):
    a = folds_of(prepare(cfg_for(base)))
    other = tmp_path_factory.mktemp("again")
    b = folds_of(prepare(cfg_for(base, f"paths.processed={other}")))
    assert a == b
    c = folds_of(prepare(cfg_for(base, f"paths.processed={other}", "dataset.split_seed=7")))
    assert c != a  # another split_seed, another split (same per-class counts)
    assert sum(v == "val" for v in c.values()) == sum(v == "val" for v in a.values())


def _check_only_boundary_moves(old: dict[str, str], new: dict[str, str], seed: int, added_per_class: dict[str, int]):
    """Old ids keep their fold except at each class's hash boundary; at most one per added image."""
    cls = lambda i: i.split(".")[0]  # noqa: E731
    for c, added in added_per_class.items():
        ids = [i for i in old if cls(i) == c]
        changed = [i for i in ids if old[i] != new[i]]
        assert len(changed) <= added, (c, changed)
        t_old = max(_unit_hash(seed, i) for i in ids if old[i] == "val")
        t_new = max(_unit_hash(seed, i) for i in new if cls(i) == c and new[i] == "val")
        lo, hi = min(t_old, t_new), max(t_old, t_new)
        assert all(lo <= _unit_hash(seed, i) <= hi for i in changed)


def test_new_images_do_not_reshuffle_old_ones(base: Path):
    out = prepare(cfg_for(base))
    old = folds_of(out)
    raw = raw_of(base)
    rng = np.random.default_rng(5)
    for n in range(10, 13):  # three new cats and three new dogs
        for cls in ("cat", "dog"):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(raw / "train" / f"{cls}.{n}.jpg")
    prepare(cfg_for(base))
    new = folds_of(out)
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


# ------------------------------------------------------------------ incremental reruns
def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}


def test_second_run_does_no_work(base: Path, capsys):
    out = prepare(cfg_for(base))
    before = _mtimes(out)
    capsys.readouterr()
    prepare(cfg_for(base))
    assert "up to date" in capsys.readouterr().out
    assert _mtimes(out) == before


@pytest.mark.parametrize("change, check", [
    ("dataset.val_fraction=0.5", lambda out: manifests(out)[0].query("fold == 'val'")["class"].value_counts().to_dict()
     == {"cat": 5, "dog": 5}),
    ("dataset.image_size=32", lambda out: np.load(out / "train.npy", mmap_mode="r").shape == (20, 32, 32, 3)),
])
def test_config_change_redoes_the_work(base: Path, capsys, change, check):
    out = prepare(cfg_for(base))
    capsys.readouterr()
    prepare(cfg_for(base, change))
    assert "up to date" not in capsys.readouterr().out
    assert check(out)
    capsys.readouterr()
    prepare(cfg_for(base, change))
    assert "up to date" in capsys.readouterr().out


def test_changed_raw_file_redoes_the_work(base: Path, capsys):
    out = prepare(cfg_for(base))
    Image.new("RGB", (50, 50), (0, 255, 0)).save(raw_of(base) / "test" / "3.jpg")
    capsys.readouterr()
    prepare(cfg_for(base))
    assert "up to date" not in capsys.readouterr().out
    green = np.load(out / "test.npy")[2]
    assert green[..., 1].min() > 200 and green[..., 0].max() < 50



def test_redoing_unchanged_data_gives_byte_identical_outputs(base: Path, capsys):
    """Only state.json (the mtime fingerprint, kept out of DVC's hash by .dvcignore) may differ after a re-prepare of
    the same files, e.g. after `dvc pull` or a clone: otherwise DVC would rerun training for nothing."""
    out = prepare(cfg_for(base, "prepare.workers=2"))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for f in raw_of(base).rglob("*"):
        if f.is_file():
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    prepare(cfg_for(base, "prepare.workers=2"))
    assert "up to date" not in capsys.readouterr().out   # it really redid the work
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before.keys() == after.keys() and "preview.png" in after
    assert [n for n in after if after[n] != before[n]] == ["state.json"]
    assert "/data/processed/*/state.json" in (ROOT / ".dvcignore").read_text().split("\n")

# ------------------------------------------------------------------ resizing
@pytest.fixture
def wide_red(tmp_path: Path) -> str:
    p = tmp_path / "wide.png"
    Image.new("RGB", (200, 100), (255, 0, 0)).save(p)
    return str(p)


def test_resize_stretch_and_crop_fill_the_square(wide_red: str):
    for mode in ("stretch", "crop"):
        a = load_image(wide_red, 40, mode)
        assert a.shape == (40, 40, 3) and a.dtype == np.uint8
        assert (a[..., 0] > 240).all() and (a[..., 1:] < 15).all(), mode


def test_resize_pad_keeps_aspect_with_black_bars(wide_red: str, tmp_path: Path):
    a = load_image(wide_red, 40, "pad")
    assert a.shape == (40, 40, 3)
    assert a[:9].max() == 0 and a[31:].max() == 0  # 200x100 -> 40x20 content, 10-pixel bars above and below
    assert (a[12:28, :, 0] > 240).all()
    tall = tmp_path / "tall.png"
    Image.new("RGB", (50, 150), (0, 0, 255)).save(tall)
    b = load_image(str(tall), 30, "pad")
    assert b[:, :4].max() == 0 and b[:, 26:].max() == 0 and (b[:, 12:18, 2] > 240).all()


def test_prepare_applies_the_resize_mode(tmp_path: Path):
    dogs_vs_cats(raw_of(tmp_path), n_per_class=4, n_test=3, size=(96, 32))  # 3:1 noise images
    out = prepare(cfg_for(tmp_path, "dataset.resize=pad"))
    x = np.load(out / "train.npy")
    assert x.shape == (8, SIZE, SIZE, 3)
    assert x[:, :14].max() == 0 and x[:, -14:].max() == 0 and x[:, 20:28].mean() > 50
    out = prepare(cfg_for(tmp_path, "dataset.resize=crop", f"paths.processed={tmp_path}/crop"))
    assert np.load(out / "train.npy")[:, :14].mean() > 50


# ------------------------------------------------------------------ archives
def _zip_dir(folder: Path, archive: Path, top: str | None) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"{top}/{p.name}" if top else p.name)


def test_zip_archives_are_unpacked(tmp_path: Path):
    src = dogs_vs_cats(tmp_path / "src", n_per_class=5, n_test=11)
    raw = raw_of(tmp_path)
    raw.mkdir(parents=True)
    _zip_dir(src / "train", raw / "train.zip", "train")  # Kaggle's train.zip holds train/...
    _zip_dir(src / "test", raw / "test.zip", None)       # and a flat archive works too
    (raw / "sample_submission.csv").write_text((src / "sample_submission.csv").read_text())
    out = prepare(cfg_for(tmp_path))
    assert sorted(p.name for p in (raw / "train").iterdir()) == sorted(p.name for p in (src / "train").iterdir())
    assert len(list((raw / "test").iterdir())) == 11
    train, test = manifests(out)
    assert len(train) == 10 and test["id"].tolist() == list(range(1, 12))
    assert np.load(out / "test.npy").shape == (11, SIZE, SIZE, 3)


# ------------------------------------------------------------------ conversions and skips
def test_odd_images_are_converted_and_broken_ones_skipped(tmp_path: Path):
    raw = dogs_vs_cats(raw_of(tmp_path), n_per_class=5, n_test=3)
    t = raw / "train"
    Image.new("L", (60, 40), 77).save(t / "cat.50.jpg")                           # grayscale
    Image.new("CMYK", (60, 40), (0, 255, 255, 0)).save(t / "cat.51.jpg")          # CMYK (red)
    rgba = Image.new("RGBA", (60, 40), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 30, 40))                                      # left half transparent
    rgba.save(t / "dog.50.jpg", format="PNG")                                     # a PNG named .jpg
    Image.new("P", (60, 40), 3).save(t / "dog.51.jpg", format="PNG")              # palette
    (t / "cat.52.jpg").write_bytes(b"definitely not a jpeg" * 20)                 # corrupt
    (t / "dog.52.jpg").write_bytes(b"")                                           # zero bytes
    good = (t / "cat.0.jpg").read_bytes()
    (t / "cat.53.jpg").write_bytes(good[: len(good) // 2])                        # truncated
    (t / "notes.txt").write_text("hello")

    out = prepare(cfg_for(tmp_path))
    train, _ = manifests(out)
    x = np.load(out / "train.npy")
    assert set(train["id"]) == {f"{c}.{n}" for c in ("cat", "dog") for n in [*range(5), 50, 51]}
    px = {i: x[k] for i, k in zip(train["id"], train["index"])}
    assert all(v.shape == (SIZE, SIZE, 3) for v in px.values())
    g = px["cat.50"].astype(int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all() and abs(g.mean() - 77) < 3
    assert px["cat.51"][..., 0].mean() > 200 and px["cat.51"][..., 1:].mean() < 60
    rgba_px = px["dog.50"]
    assert (rgba_px[:, :20] > 240).all()  # transparent -> white
    assert rgba_px[:, 28:, 2].min() > 240 and rgba_px[:, 28:, :2].max() < 15

    report = json.loads((out / "report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"cat.52.jpg", "dog.52.jpg", "cat.53.jpg", "notes.txt"}
    assert report["skipped_count"] == 4
    assert "0 bytes" in skipped["dog.52.jpg"]
    assert all(reason for reason in skipped.values())


def test_missing_raw_folder_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        prepare(cfg_for(tmp_path))
