"""The raw Kaggle layout: make sure it is there (generate the demo, unpack archives), then list what it holds.

Dogs vs Cats (dataset.layout=filename): train/<class>.<n>.jpg, test/<id>.jpg, sample_submission.csv.
CIFAR-10 (dataset.layout=labels_csv): train/<id>.png + trainLabels.csv (id,label), test/<id>.png,
sampleSubmission.csv. Every file that does not fit is reported with its reason; ids that cannot pair up
(duplicates, unknown classes, a test folder that disagrees with the sample submission) are one-line errors.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from .errors import UserError
from .paths import Layout


@dataclass
class Scan:
    train: pd.DataFrame  # id, path, label, class
    test: pd.DataFrame   # id (int), path
    skipped: list[dict]  # path, reason
    warnings: list[str]


# ------------------------------------------------------------------ making the raw folder
def extract(archive: Path, dest: Path) -> None:
    """Unpack a Kaggle archive (zip or 7z) into dest/<its stem>, atomically (a temporary folder renamed into place)."""
    if archive.suffix not in (".zip", ".7z"):
        raise UserError(f"{archive}: unknown archive type; expected .zip or .7z")
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".extract-{archive.stem}-"))
    try:
        if archive.suffix == ".zip":
            import zipfile

            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        else:
            import py7zr

            with py7zr.SevenZipFile(archive, "r") as z:
                z.extractall(tmp)
        inner = tmp / archive.stem
        os.replace(inner if inner.is_dir() else tmp, dest / archive.stem)
    except Exception as e:  # zipfile, py7zr and OSError all mean the same to the user: a broken archive
        raise UserError(f"{archive}: cannot unpack it ({type(e).__name__}: {e}); delete it and download it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_raw(cfg: DictConfig, lay: Layout) -> None:
    """Make sure the raw folder holds train/ and test/: generate the demo data, or unpack train/test archives."""
    if not lay.raw_train.is_dir() and cfg.dataset.get("generate") == "demo":
        from .demo_data import make_demo_dataset

        demo = cfg.dataset.demo
        print(f"prepare: generating the demo dataset in {lay.raw}")
        make_demo_dataset(lay.raw, seed=demo.seed, n_train_per_class=demo.n_train_per_class, n_test=demo.n_test)
    if not lay.raw.is_dir():
        raise UserError(f"raw data folder {lay.raw} not found; put the Kaggle files there (see README, 'Data layout') "
                        f"or run: python -m src.kaggle download dataset={cfg.dataset.name}")
    for folder in (lay.raw_train, lay.raw_test):
        archive = next((a for a in (folder.with_suffix(".zip"), folder.with_suffix(".7z")) if a.is_file()), None)
        if not folder.is_dir() and archive is not None:
            print(f"prepare: unpacking {archive}")
            extract(archive, lay.raw)
    if not lay.raw_train.is_dir():
        raise UserError(f"{lay.raw_train} not found; expected the Kaggle layout (train/ and test/, or train.zip/"
                        f"train.7z and test.zip/test.7z) in {lay.raw}")


# ------------------------------------------------------------------ listing it
def scan(cfg: DictConfig, lay: Layout) -> Scan:
    """List the labelled training images and the test images, reporting every file that does not fit the layout."""
    ds = cfg.dataset
    files, skipped = _image_files(lay.raw_train, list(ds.image_ext))
    notes: list[str] = []
    if ds.layout == "filename":
        train = _by_file_name(files, list(ds.classes), skipped, lay)
    else:
        train = _by_labels_csv(files, list(ds.classes), skipped, notes, lay)
    if train.empty:
        raise UserError(f"{lay.raw_train}: no labelled training images found; check dataset.layout and the file names")
    absent = [c for c in ds.classes if c not in set(train["class"])]
    if absent:
        raise UserError(f"{lay.raw_train}: no training images of class(es) {absent}; every class in dataset.classes "
                        "needs some")
    test = _test_images(lay, list(ds.image_ext), skipped)
    _check_sample_submission(lay, test, notes)
    return Scan(train.reset_index(drop=True), test, skipped, notes)


def _image_files(folder: Path, exts: list[str]) -> tuple[list[Path], list[dict]]:
    files, skipped = [], []
    exts = {"." + e.lower().lstrip(".") for e in exts}
    with os.scandir(folder) as it:  # directory entries carry their type: no stat per file (25,000 in Kaggle's train/)
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        p = folder / e.name
        if e.is_file() and p.suffix.lower() in exts:
            files.append(p)
        else:
            skipped.append({"path": str(p), "reason": f"not an image file of the expected types ({', '.join(sorted(exts))})"})
    return files, skipped


def _by_file_name(files: list[Path], classes: list[str], skipped: list[dict], lay: Layout) -> pd.DataFrame:
    """<class>.<n>.<ext>: the label is the file-name prefix."""
    pattern = re.compile(r"^(" + "|".join(map(re.escape, classes)) + r")\.(\d+)$", re.IGNORECASE)
    rows = []
    for p in files:
        m = pattern.match(p.stem)
        if not m:
            skipped.append({"path": str(p), "reason": f"name does not match <class>.<number>.<ext> with class in {classes}"})
            continue
        cls = m.group(1).lower()
        rows.append((p.stem.lower(), p, classes.index(cls), cls, int(m.group(2))))
    train = pd.DataFrame(rows, columns=["id", "path", "label", "class", "n"]).sort_values(["label", "n"]).drop(columns="n")
    if train["id"].duplicated().any():
        dup = train.loc[train["id"].duplicated(), "id"].iloc[0]
        raise UserError(f"{lay.raw_train}: image id {dup!r} appears twice (e.g. .jpg and .jpeg); keep one of them")
    return train


def _read_labels(path: Path | None, classes: list[str]) -> pd.DataFrame:
    if path is None or not path.is_file():
        raise UserError(f"labels file {path} not found; expected Kaggle's labels CSV (id,label) beside train/")
    try:
        labels = pd.read_csv(path, dtype=str)
    except Exception as e:
        raise UserError(f"{path}: cannot read it as CSV ({e})") from e
    if list(labels.columns[:2]) != ["id", "label"]:
        raise UserError(f"{path}: expected the header 'id,label', found {','.join(labels.columns)}")
    labels["id"], labels["label"] = labels["id"].str.strip(), labels["label"].str.strip()
    dups = labels.loc[labels["id"].duplicated(), "id"]
    if len(dups):
        raise UserError(f"{path}: id {dups.iloc[0]} appears {int((labels['id'] == dups.iloc[0]).sum())} times "
                        f"({len(dups)} duplicate rows); each id must have exactly one label")
    unknown = sorted(set(labels["label"].dropna()) - set(classes))
    if unknown or labels["label"].isna().any():
        shown = ", ".join(repr(u) for u in unknown[:5]) or "an empty label"
        raise UserError(f"{path}: unknown class name(s) {shown}; dataset.classes allows {classes}")
    return labels


def _by_labels_csv(files: list[Path], classes: list[str], skipped: list[dict], notes: list[str],
                   lay: Layout) -> pd.DataFrame:
    """<id>.<ext> with the class name in the labels CSV."""
    labels = _read_labels(lay.labels_csv, classes)
    by_id = {}
    for p in files:
        if p.stem.isdigit():
            by_id[str(int(p.stem))] = p
        else:
            skipped.append({"path": str(p), "reason": "name is not a numeric id (<id>.<ext>)"})
    label_of = dict(zip(labels["id"], labels["label"]))
    rows = []
    for i in sorted(by_id, key=int):
        if i in label_of:
            rows.append((i, by_id[i], classes.index(label_of[i]), label_of[i]))
        else:
            skipped.append({"path": str(by_id[i]), "reason": f"id {i} has no row in {lay.labels_csv.name}"})
    missing = [i for i in labels["id"] if i not in by_id]
    if missing:
        notes.append(f"{len(missing)} id(s) in {lay.labels_csv.name} have no image (e.g. {', '.join(missing[:5])}); "
                     "they are left out")
    return pd.DataFrame(rows, columns=["id", "path", "label", "class"])


def _test_images(lay: Layout, exts: list[str], skipped: list[dict]) -> pd.DataFrame:
    if not lay.raw_test.is_dir():
        raise UserError(f"{lay.raw_test} not found; expected the Kaggle test images (test/<id>.<ext>) or test.zip/"
                        f"test.7z in {lay.raw}")
    files, more = _image_files(lay.raw_test, exts)
    skipped += more
    rows = []
    for p in files:
        if p.stem.isdigit():
            rows.append((int(p.stem), p))
        else:
            skipped.append({"path": str(p), "reason": "test file name is not a numeric id (<id>.<ext>); it cannot be submitted"})
    test = pd.DataFrame(rows, columns=["id", "path"]).sort_values("id", kind="stable").reset_index(drop=True)
    if test.empty:
        raise UserError(f"{lay.raw_test}: no test images (<id>.{exts[0]}) found; the folder is empty or misnamed")
    if test["id"].duplicated().any():
        dup = int(test.loc[test["id"].duplicated(), "id"].iloc[0])
        names = ", ".join(p.name for p in test.loc[test["id"] == dup, "path"])
        raise UserError(f"{lay.raw_test}: test id {dup} appears twice (files {names}); keep one")
    return test


def _check_sample_submission(lay: Layout, test: pd.DataFrame, notes: list[str]) -> None:
    """The test ids must be exactly the sample submission's (else the CSV could never be accepted)."""
    sample_path, ids = lay.sample_submission, test["id"].to_numpy()
    if not sample_path.is_file():
        if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
            notes.append(f"no {sample_path.name} to check against, and test ids are not 1..{len(ids)} without gaps")
        return
    sample_ids = read_sample_ids(sample_path)
    missing, extra = sorted(set(sample_ids) - set(ids.tolist())), sorted(set(ids.tolist()) - set(sample_ids))
    if missing or extra:
        def eg(v):
            return f" (e.g. {', '.join(map(str, v[:5]))})" if v else ""

        raise UserError(f"{lay.raw_test} disagrees with {sample_path.name}: {len(missing)} id(s) without an image"
                        f"{eg(missing)}, {len(extra)} image(s) not in the sample{eg(extra)}; restore the missing test "
                        "images or download the test set again")


def read_sample_ids(path: Path) -> list[int]:
    """The ids of Kaggle's sample submission, checked: integers, each once."""
    try:
        sample = pd.read_csv(path)
    except Exception as e:
        raise UserError(f"{path}: cannot read it as CSV ({e})") from e
    if "id" not in sample.columns:
        raise UserError(f"{path}: no 'id' column; expected Kaggle's sample submission (id,label)")
    numeric = pd.to_numeric(sample["id"], errors="coerce")
    bad = sample["id"][numeric.isna() | (numeric.fillna(0) % 1 != 0)]
    if len(bad):
        raise UserError(f"{path}: id {bad.iloc[0]!r} is not an integer; every id must be a test image number")
    if numeric.duplicated().any():
        raise UserError(f"{path}: id {int(numeric[numeric.duplicated()].iloc[0])} appears more than once; "
                        "download the sample submission again")
    return numeric.astype(int).tolist()
