"""prepare's outputs as the later stages read them: the manifests (train.csv, test.csv), the class list, and where
the image arrays are. Plain pandas: reading them needs no TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .files import file_sha256, read_json, short_hash
from .paths import Layout
from .split import assign_cv_folds

PIXEL_KEYS = ("image_size", "resize", "prepare_version")  # the report's keys that say how the arrays were made


@dataclass
class Manifests:
    """prepare's outputs, as the later stages read them."""
    train: pd.DataFrame  # fold == "train"
    val: pd.DataFrame    # fold == "val"
    test: pd.DataFrame
    classes: list[str]
    train_images: Path   # train.npy
    test_images: Path    # test.npy
    files: tuple[Path, ...]  # the manifests and the class list
    report: Path             # prepare's report: image size, resize mode and prepare's version name the pixels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        arr = np.load(self.train_images, mmap_mode="r")
        return tuple(int(v) for v in arr.shape[1:])  # type: ignore[return-value]

    def labels(self) -> np.ndarray:
        """Every labelled image's label (train and validation folds)."""
        return np.concatenate([self.train["label"].to_numpy(), self.val["label"].to_numpy()])

    def labelled_images(self, ids) -> np.ndarray:
        """The prepared images (rows of train.npy, found by the manifest's index column) of these labelled ids,
        in the order given."""
        frame = pd.concat([self.train, self.val])
        rows = frame.set_index(frame["id"].astype(str))["index"].loc[[str(i) for i in ids]].to_numpy()
        return np.asarray(np.load(self.train_images, mmap_mode="r")[rows])

    def fingerprint(self) -> str:
        """Which prepared data a run saw: a hash of the manifests, the class list and what made the pixels (image
        size, resize mode, prepare's version). Not of the whole report: its raw_dir and skipped paths say where
        the raw folder lies (another checkout, another path), not what the arrays hold, and a fingerprint that
        counted them made every prediction look stale to a run from a second checkout of the same data."""
        report = read_json(self.report) if self.report.is_file() else {}
        pixels = {k: report.get(k) for k in PIXEL_KEYS}
        return "".join(file_sha256(f)[:8] for f in self.files) + short_hash(pixels)[:8]


def load(lay: Layout, cv: tuple[int, int, int] | None = None) -> Manifests:
    """prepare's manifests; with cv = (folds, fold, split seed), fold `fold` of the cross-validation folds
    (src/split.py) is the validation set and the other folds the training set, instead of prepare's split."""
    try:
        train = pd.read_csv(lay.train_manifest, dtype={"id": str})
        test = pd.read_csv(lay.test_manifest)
        classes = read_json(lay.classes)
    except FileNotFoundError as e:
        raise UserError(f"{e.filename} not found; run python -m src.prepare first") from e
    if cv is not None:
        folds, fold, seed = cv
        train["fold"] = np.where(assign_cv_folds(train["id"], train["label"], folds, seed) == fold, "val", "train")
    return Manifests(train[train["fold"] == "train"].reset_index(drop=True),
                     train[train["fold"] == "val"].reset_index(drop=True), test, classes, lay.train_images,
                     lay.test_images, (lay.train_manifest, lay.test_manifest, lay.classes), lay.report)


def for_run(cfg, lay: Layout) -> Manifests:
    """The manifests a run trains and validates on: its cross-validation fold (cv.folds, cv.fold), else prepare's
    split (dataset.val_fraction)."""
    cv = (int(cfg.cv.folds), int(cfg.cv.fold), int(cfg.dataset.split_seed)) if lay.folds and lay.fold is not None else None
    return load(lay, cv)
