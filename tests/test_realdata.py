"""prepare on the real photos in ../shared/data (read only; outputs go to tmp): every readable image kept, the
configured size, a stratified split, the rows holding the right photos, and CIFAR-10 labels mapped to the right
class names (checked against Kaggle's own trainLabels.csv). Skipped where ../shared/data is absent. Never reads
test_labels_for_benchmarks.csv."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import SHARED_DATA, checked
from src import prepare
from src.images import load_image

pytestmark = [pytest.mark.realdata]
DVC = SHARED_DATA / "dogs_vs_cats"
CIFAR = SHARED_DATA / "cifar10"


def _need(folder: Path) -> None:
    if not (folder / "train").is_dir():
        pytest.skip(f"real data not available: {folder} is absent (CI keeps ../shared beside the clone)")


def test_dogs_vs_cats_real_photos(tmp_path: Path):
    _need(DVC)
    n_files = len(list((DVC / "train").glob("*.jpg")))
    n_test = len(list((DVC / "test").glob("*.jpg")))
    assert (n_files, n_test) == (2002, 500)
    cfg = checked("prepare", "dataset=dogs_vs_cats", f"dataset.raw_dir={DVC}", f"paths.processed={tmp_path}",
                  "prepare.workers=0", "prepare.preview=false")
    out = prepare.run(cfg).processed
    x = np.load(out / "train.npy", mmap_mode="r")
    xt = np.load(out / "test.npy", mmap_mode="r")
    assert x.shape == (2002, 150, 150, 3) and xt.shape == (500, 150, 150, 3) and x.dtype == np.uint8
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    test = pd.read_csv(out / "test.csv")
    assert len(train) == 2002 and train["id"].is_unique  # every readable image kept
    assert train["class"].value_counts().to_dict() == {"cat": 1001, "dog": 1001}
    assert (train["label"] == (train["class"] == "dog").astype(int)).all()
    val = train.query("fold == 'val'")["class"].value_counts()
    for c in ("cat", "dog"):
        assert abs(val[c] - 0.2 * 1001) <= 1, val.to_dict()
    assert test["id"].tolist() == list(range(1, 501)) and test["ok"].all()
    report = json.loads((out / "report.json").read_text())
    assert report["skipped_count"] == 0 and report["test_images"] == 500
    # rows hold the right photos
    for _, r in train.sample(3, random_state=0).iterrows():
        np.testing.assert_array_equal(x[r["index"]], load_image(str(DVC / r["path"]), 150))
    for i in (1, 10, 500):
        r = test[test["id"] == i].iloc[0]
        np.testing.assert_array_equal(xt[r["index"]], load_image(str(DVC / "test" / f"{i}.jpg"), 150))


def test_cifar10_real_subset_label_mapping(tmp_path: Path):
    _need(CIFAR)
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir()
    labels = pd.read_csv(CIFAR / "trainLabels.csv")
    subset = labels.head(500)
    assert subset["id"].tolist() == list(range(1, 501))
    for i in subset["id"]:
        (raw / "train" / f"{i}.png").symlink_to(CIFAR / "train" / f"{i}.png")
    subset.to_csv(raw / "trainLabels.csv", index=False)
    for i in range(1, 101):
        (raw / "test" / f"{i}.png").symlink_to(CIFAR / "test" / f"{i}.png")
    sample = pd.read_csv(CIFAR / "sampleSubmission.csv")
    sample[sample["id"] <= 100].to_csv(raw / "sampleSubmission.csv", index=False)

    out = prepare.run(checked("prepare", "dataset=cifar10", f"dataset.raw_dir={raw}",
                              f"paths.processed={tmp_path / 'processed'}", "prepare.workers=1",
                              "prepare.preview=false")).processed
    classes = json.loads((out / "classes.json").read_text())
    assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    assert len(train) == 500
    truth = dict(zip(subset["id"].astype(str), subset["label"]))
    # id 1's label index maps back to the class Kaggle's CSV gives it, and so does every other id
    row1 = train.set_index("id").loc["1"]
    assert classes[row1["label"]] == truth["1"] == row1["class"]
    assert all(classes[lab] == truth[i] for i, lab in zip(train["id"], train["label"]))
    x = np.load(out / "train.npy")
    for i in ("1", "2", "250", "500"):
        r = train.set_index("id").loc[i]
        np.testing.assert_array_equal(x[r["index"]], np.asarray(Image.open(CIFAR / "train" / f"{i}.png").convert("RGB")))
    per_class = train["class"].value_counts()
    val = train.query("fold == 'val'")["class"].value_counts().reindex(classes, fill_value=0)
    for c in classes:
        assert abs(val[c] - 0.1 * per_class[c]) <= 1, (c, val[c], per_class[c])
    test = pd.read_csv(out / "test.csv")
    assert test["id"].tolist() == list(range(1, 101))
    assert np.load(out / "test.npy", mmap_mode="r").shape == (100, 32, 32, 3)
