"""Tiny raw folders in the Kaggle layouts, written image by image (for tests; fast, deterministic, no TF).

dogs_vs_cats(): train/cat.N.jpg, train/dog.N.jpg, test/1..N.jpg, sample_submission.csv
cifar(): train/1..N.png + trainLabels.csv (class names), test/1..M.png, sampleSubmission.csv
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _noise_image(rng: np.random.Generator, w: int, h: int, base: int | None = None) -> Image.Image:
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if base is not None:  # a class-dependent tint, so tiny models have something to learn
        arr[..., base % 3] = np.maximum(arr[..., base % 3], 200)
    return Image.fromarray(arr, "RGB")


def dogs_vs_cats(raw: Path, n_per_class: int = 10, n_test: int = 12, seed: int = 0,
                 size: tuple[int, int] = (64, 52)) -> Path:
    """A Dogs-vs-Cats-shaped raw folder with n_per_class cats and dogs and test ids 1..n_test."""
    rng = np.random.default_rng(seed)
    (raw / "train").mkdir(parents=True, exist_ok=True)
    (raw / "test").mkdir(parents=True, exist_ok=True)
    for n in range(n_per_class):
        for k, cls in enumerate(("cat", "dog")):
            _noise_image(rng, *size, base=k).save(raw / "train" / f"{cls}.{n}.jpg", quality=95)
    for i in range(1, n_test + 1):
        _noise_image(rng, *size).save(raw / "test" / f"{i}.jpg", quality=95)
    write_sample(raw / "sample_submission.csv", range(1, n_test + 1), "0.5")
    return raw


def write_sample(path: Path, ids, label: str) -> None:
    path.write_text("id,label\n" + "".join(f"{i},{label}\n" for i in ids))


def cifar(raw: Path, n_per_class: int = 6, n_test: int = 12, seed: int = 0,
          classes: list[str] = CIFAR_CLASSES) -> tuple[Path, dict[int, str]]:
    """A CIFAR-10-shaped raw folder: 32x32 PNGs, ids shuffled across classes; returns (raw, {id: class})."""
    rng = np.random.default_rng(seed)
    (raw / "train").mkdir(parents=True, exist_ok=True)
    (raw / "test").mkdir(parents=True, exist_ok=True)
    labels = [c for c in classes for _ in range(n_per_class)]
    rng.shuffle(labels)  # id order is not class order
    truth = {}
    for i, cls in enumerate(labels, start=1):
        _noise_image(rng, 32, 32, base=classes.index(cls)).save(raw / "train" / f"{i}.png")
        truth[i] = cls
    (raw / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in truth.items()))
    for i in range(1, n_test + 1):
        _noise_image(rng, 32, 32).save(raw / "test" / f"{i}.png")
    write_sample(raw / "sampleSubmission.csv", range(1, n_test + 1), classes[0])
    return raw, truth


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
