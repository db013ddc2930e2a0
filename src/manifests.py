"""prepare's outputs as the later stages read them: the manifests (train.csv, test.csv), the class list, and where
the image arrays are. Plain pandas: reading them needs no TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .files import file_sha256, read_json
from .paths import Layout


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

    def fingerprint(self) -> str:
        """A hash of the manifests and the class list: which data a run saw."""
        return "".join(file_sha256(f)[:8] for f in self.files)


def load(lay: Layout) -> Manifests:
    try:
        train = pd.read_csv(lay.train_manifest, dtype={"id": str})
        test = pd.read_csv(lay.test_manifest)
        classes = read_json(lay.classes)
    except FileNotFoundError as e:
        raise UserError(f"{e.filename} not found; run python -m src.prepare first") from e
    return Manifests(train[train["fold"] == "train"].reset_index(drop=True),
                     train[train["fold"] == "val"].reset_index(drop=True), test, classes, lay.train_images,
                     lay.test_images, (lay.train_manifest, lay.test_manifest, lay.classes))
