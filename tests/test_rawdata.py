"""The raw Kaggle layouts (src/rawdata.py): what scan() lists and reports, and what stops prepare before any work.
Files that do not fit the layout (misnamed, wrong type, folders, non-numeric test ids) are skipped with a reason;
ids that cannot pair up (duplicates, a class without images, a test folder that disagrees with the sample
submission, a broken sample submission or labels CSV) are one-line errors and nothing is written. Kaggle's archives
(train.zip/test.zip, train.7z/test.7z) are unpacked in place; a broken one is a one-line error. No TensorFlow here.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import checked, cifar_cfg, dogs_cfg, path_overrides
from imagegen import cifar, dogs_vs_cats, noise_image, small_cifar, small_dogs_vs_cats
from src import prepare, rawdata
from src.errors import UserError
from src.paths import Layout


def _scan(cfg) -> rawdata.Scan:
    return rawdata.scan(cfg, Layout(cfg))


def _one_line_error(cfg, message: str) -> str:
    """prepare fails with `message` in one line, before writing anything."""
    with pytest.raises(UserError) as e:
        prepare.run(cfg)
    msg = str(e.value)
    assert message in msg and "\n" not in msg, msg
    assert not Layout(cfg).processed.exists()  # stopped before any output
    return msg


# ------------------------------------------------------------------ scan: what does not fit is reported
def test_misnamed_files_are_reported(tmp_path: Path):
    raw = small_dogs_vs_cats(tmp_path / "raw")
    rng = np.random.default_rng(3)
    for name in ("horse.1.jpg", "cat.jpg", "cat.x.jpg", "cat1.jpg", "dog.2.3.jpg"):
        noise_image(rng, 40, 40).save(raw / "train" / name, "JPEG")
    (raw / "train" / "notes.txt").write_text("hello")
    (raw / "train" / "subdir").mkdir()
    noise_image(rng, 40, 40).save(raw / "test" / "abc.jpg", "JPEG")
    s = _scan(dogs_cfg(tmp_path, raw))
    reasons = {Path(x["path"]).name: x["reason"] for x in s.skipped}
    assert set(reasons) == {"horse.1.jpg", "cat.jpg", "cat.x.jpg", "cat1.jpg", "dog.2.3.jpg", "notes.txt", "subdir",
                            "abc.jpg"}
    assert "<class>.<number>" in reasons["horse.1.jpg"]
    assert "numeric id" in reasons["abc.jpg"]
    assert "not an image file" in reasons["notes.txt"] and "not an image file" in reasons["subdir"]
    assert len(s.train) == 8 and s.test["id"].tolist() == [1, 2, 3, 4]


def test_labels_csv_rows_and_images_that_do_not_pair_up(tmp_path: Path):
    raw = small_cifar(tmp_path / "raw", "id,label\n1,cat\n2,dog\n3,cat\n7,dog\n8,cat\n")  # 4.png: no row; 7, 8: no image
    noise_image(np.random.default_rng(6), 32, 32).save(raw / "train" / "x.png")
    s = _scan(cifar_cfg(tmp_path, raw, "dataset.classes=[cat,dog]"))
    assert s.train["id"].tolist() == ["1", "2", "3"]
    assert s.train["class"].tolist() == ["cat", "dog", "cat"]
    reasons = {Path(x["path"]).name: x["reason"] for x in s.skipped}
    assert "no row in trainLabels.csv" in reasons["4.png"] and "numeric id" in reasons["x.png"]
    assert any("2 id(s) in trainLabels.csv have no image" in w for w in s.warnings)


# ------------------------------------------------------------------ ids that cannot pair up: one line, no work
@pytest.mark.parametrize("fault, message", [
    ("dup_train", "image id 'cat.1' appears twice"),
    ("dup_test", "test id 1 appears twice"),
    ("missing_class", "no training images of class(es) ['dog']"),
    ("sample_missing_id", "disagrees with sample_submission.csv: 1 id(s) without an image (e.g. 3)"),
    ("sample_extra_image", "disagrees with sample_submission.csv: 0 id(s) without an image, 1 image(s) not in the "
                           "sample (e.g. 5)"),
    ("sample_bad_id", "sample_submission.csv: id 'five' is not an integer"),
    ("sample_dup_id", "sample_submission.csv: id 4 appears more than once"),
    ("sample_no_id_column", "no 'id' column"),
    ("empty_test", "no test images"),
])
def test_bad_ids_are_one_line_errors(tmp_path: Path, fault: str, message: str):
    raw = small_dogs_vs_cats(tmp_path / "raw")
    rng = np.random.default_rng(4)
    if fault == "dup_train":
        noise_image(rng, 40, 40).save(raw / "train" / "cat.1.jpeg", "JPEG")
    elif fault == "dup_test":
        noise_image(rng, 40, 40).save(raw / "test" / "01.jpg", "JPEG")
    elif fault == "missing_class":
        for p in (raw / "train").glob("dog.*"):
            p.unlink()
    elif fault == "sample_missing_id":
        (raw / "test" / "3.jpg").unlink()
    elif fault == "sample_extra_image":
        noise_image(rng, 40, 40).save(raw / "test" / "5.jpg", "JPEG")
    elif fault == "sample_bad_id":
        (raw / "sample_submission.csv").write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\nfive,0.5\n")
    elif fault == "sample_dup_id":
        (raw / "sample_submission.csv").write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n4,0.5\n")
    elif fault == "sample_no_id_column":
        (raw / "sample_submission.csv").write_text("image,label\n1,0.5\n")
    elif fault == "empty_test":
        for p in (raw / "test").iterdir():
            p.unlink()
    _one_line_error(dogs_cfg(tmp_path, raw), message)


GOOD_LABELS = "id,label\n1,cat\n2,dog\n3,cat\n4,dog\n"


@pytest.mark.parametrize("labels, fault, message", [
    ("id,label\n1,cat\n2,dog\n3,horse\n4,cat\n", None, "unknown class name(s) 'horse'; dataset.classes allows"),
    ("id,label\n1,cat\n2,dog\n3,\n4,cat\n", None, "an empty label"),
    ("id,label\n1,cat\n2,dog\n2,cat\n3,cat\n4,dog\n", None, "id 2 appears 2 times (1 duplicate rows)"),
    ("image,class\n1,cat\n2,dog\n", None, "expected the header 'id,label', found image,class"),
    (GOOD_LABELS, "no_labels_file", "labels file"),
    (GOOD_LABELS, "missing_test_image", "disagrees with sampleSubmission.csv: 1 id(s) without an image (e.g. 3)"),
])
def test_bad_labels_csv(tmp_path: Path, labels: str, fault: str | None, message: str):
    raw = small_cifar(tmp_path / "raw", labels)
    if fault == "no_labels_file":
        (raw / "trainLabels.csv").unlink()
    elif fault == "missing_test_image":
        (raw / "test" / "3.png").unlink()
    msg = _one_line_error(cifar_cfg(tmp_path, raw, "dataset.classes=[cat,dog]"), message)
    assert str(raw) in msg  # names the folder or file at fault


# ------------------------------------------------------------------ the raw folder itself
def test_missing_raw_folder_is_a_user_error(tmp_path: Path):
    cfg = checked("prepare", "dataset=dogs_vs_cats", "prepare.workers=1", *path_overrides(tmp_path))
    msg = _one_line_error(cfg, "not found")
    assert str(tmp_path / "raw" / "dogs_vs_cats") in msg and "python -m src.kaggle download" in msg


def _zip_dir(folder: Path, archive: Path, top: str | None) -> None:
    with zipfile.ZipFile(archive, "w") as z:
        for p in sorted(folder.iterdir()):
            z.write(p, f"{top}/{p.name}" if top else p.name)


def _manifests(lay: Layout) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(lay.train_manifest, dtype={"id": str}), pd.read_csv(lay.test_manifest)


def test_zip_archives_are_unpacked(tmp_path: Path):
    src = dogs_vs_cats(tmp_path / "src", n_per_class=5, n_test=11)
    raw = tmp_path / "raw" / "dogs_vs_cats"
    raw.mkdir(parents=True)
    _zip_dir(src / "train", raw / "train.zip", "train")  # Kaggle's train.zip holds train/...
    _zip_dir(src / "test", raw / "test.zip", None)       # and a flat archive works too
    (raw / "sample_submission.csv").write_text((src / "sample_submission.csv").read_text())
    lay = prepare.run(checked("prepare", "dataset=dogs_vs_cats", "dataset.image_size=48", "prepare.workers=1",
                              *path_overrides(tmp_path)))
    assert sorted(p.name for p in (raw / "train").iterdir()) == sorted(p.name for p in (src / "train").iterdir())
    assert len(list((raw / "test").iterdir())) == 11
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]  # no half-unpacked folder left
    train, test = _manifests(lay)
    assert len(train) == 10 and test["id"].tolist() == list(range(1, 12))
    assert np.load(lay.test_images).shape == (11, 48, 48, 3)


def _seven_zip(folder: Path, archive: Path) -> None:
    py7zr = pytest.importorskip("py7zr")
    with py7zr.SevenZipFile(archive, "w") as z:
        z.writeall(folder, arcname=folder.name)


def test_7z_archives_are_unpacked(tmp_path: Path):
    src, truth = cifar(tmp_path / "src", n_per_class=2, n_test=4)
    raw = tmp_path / "raw" / "cifar10"
    raw.mkdir(parents=True)
    _seven_zip(src / "train", raw / "train.7z")
    _seven_zip(src / "test", raw / "test.7z")
    for f in ("trainLabels.csv", "sampleSubmission.csv"):
        (raw / f).write_text((src / f).read_text())
    lay = prepare.run(cifar_cfg(tmp_path, raw, "dataset.val_fraction=0.5"))
    assert len(list((raw / "train").glob("*.png"))) == 20 and len(list((raw / "test").glob("*.png"))) == 4
    train, _ = _manifests(lay)
    assert dict(zip(train["id"].astype(int), train["class"])) == truth
    assert np.load(lay.test_images).shape == (4, 32, 32, 3)


def test_broken_archive_is_a_one_line_error(tmp_path: Path):
    src = dogs_vs_cats(tmp_path / "src", n_per_class=2, n_test=2)
    raw = tmp_path / "raw" / "dogs_vs_cats"
    raw.mkdir(parents=True)
    _zip_dir(src / "train", raw / "train.zip", "train")
    (raw / "train.zip").write_bytes((raw / "train.zip").read_bytes()[:200])  # cut short: a failed download
    _zip_dir(src / "test", raw / "test.zip", "test")
    cfg = checked("prepare", "dataset=dogs_vs_cats", "prepare.workers=1", *path_overrides(tmp_path))
    msg = _one_line_error(cfg, f"{raw / 'train.zip'}: cannot unpack it")
    assert "download it again" in msg
    assert not (raw / "train").exists() and not [p for p in raw.iterdir() if p.name.startswith(".")]
