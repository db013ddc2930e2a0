"""Tiny raw folders in the Kaggle layouts, written image by image (for tests; fast, deterministic, no TF).

dogs_vs_cats(): train/cat.N.jpg, train/dog.N.jpg, test/1..N.jpg, sample_submission.csv
cifar(): train/1..N.png + trainLabels.csv (class names), test/1..M.png, sampleSubmission.csv
small_dogs_vs_cats(), small_cifar(): a few 40x40 / 32x32 images, to be broken by a test
faulty_dogs_vs_cats(), odd_cifar(): every kind of awkward image file (see BAD_TRAIN, ODD_TRAIN, BAD_TEST)
three_class(): 48x48 PNGs of three tinted classes in the labels_csv layout
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def noise_image(rng: np.random.Generator, w: int = 64, h: int = 52, tint: int | None = None) -> Image.Image:
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if tint is not None:  # a class-dependent tint, so tiny models have something to learn
        arr[..., tint % 3] = np.maximum(arr[..., tint % 3], 200)
    return Image.fromarray(arr, "RGB")


def write_sample(path: Path, ids, label: str = "0.5") -> None:
    path.write_text("id,label\n" + "".join(f"{i},{label}\n" for i in ids))


def _folders(raw: Path) -> tuple[Path, Path]:
    (raw / "train").mkdir(parents=True, exist_ok=True)
    (raw / "test").mkdir(parents=True, exist_ok=True)
    return raw / "train", raw / "test"


# ------------------------------------------------------------------ clean folders
def dogs_vs_cats(raw: Path, n_per_class: int = 10, n_test: int = 12, seed: int = 0,
                 size: tuple[int, int] = (64, 52)) -> Path:
    """A Dogs-vs-Cats-shaped raw folder with n_per_class cats and dogs and test ids 1..n_test."""
    rng = np.random.default_rng(seed)
    train, test = _folders(raw)
    for n in range(n_per_class):
        for k, cls in enumerate(("cat", "dog")):
            noise_image(rng, *size, tint=k).save(train / f"{cls}.{n}.jpg", quality=95)
    for i in range(1, n_test + 1):
        noise_image(rng, *size).save(test / f"{i}.jpg", quality=95)
    write_sample(raw / "sample_submission.csv", range(1, n_test + 1), "0.5")
    return raw


def cifar(raw: Path, n_per_class: int = 6, n_test: int = 12, seed: int = 0,
          classes: list[str] = CIFAR_CLASSES) -> tuple[Path, dict[int, str]]:
    """A CIFAR-10-shaped raw folder: 32x32 PNGs, ids shuffled across classes; returns (raw, {id: class})."""
    rng = np.random.default_rng(seed)
    train, test = _folders(raw)
    labels = [c for c in classes for _ in range(n_per_class)]
    rng.shuffle(labels)  # id order is not class order
    truth = {}
    for i, cls in enumerate(labels, start=1):
        noise_image(rng, 32, 32, tint=classes.index(cls)).save(train / f"{i}.png")
        truth[i] = cls
    (raw / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in truth.items()))
    for i in range(1, n_test + 1):
        noise_image(rng, 32, 32).save(test / f"{i}.png")
    write_sample(raw / "sampleSubmission.csv", range(1, n_test + 1), classes[0])
    return raw, truth


def small_dogs_vs_cats(raw: Path, n: int = 4, n_test: int = 4) -> Path:
    """n 40x40 cats and dogs, test ids 1..n_test: a well-formed folder for a test to break."""
    rng = np.random.default_rng(2)
    train, test = _folders(raw)
    for k in range(n):
        for j, cls in enumerate(("cat", "dog")):
            noise_image(rng, 40, 40, tint=j).save(train / f"{cls}.{k}.jpg")
    for i in range(1, n_test + 1):
        noise_image(rng, 40, 40).save(test / f"{i}.jpg")
    write_sample(raw / "sample_submission.csv", range(1, n_test + 1))
    return raw


def small_cifar(raw: Path, labels: str, n_test: int = 3) -> Path:
    """train/1..4.png with the given trainLabels.csv text, test/1..n_test.png, a matching sampleSubmission.csv."""
    rng = np.random.default_rng(5)
    train, test = _folders(raw)
    for i in range(1, 5):
        noise_image(rng, 32, 32).save(train / f"{i}.png")
    for i in range(1, n_test + 1):
        noise_image(rng, 32, 32).save(test / f"{i}.png")
    (raw / "trainLabels.csv").write_text(labels)
    write_sample(raw / "sampleSubmission.csv", range(1, n_test + 1), "cat")
    return raw


def three_class(raw: Path, classes: list[str], per_class: int = 10, n_test: int = 6) -> Path:
    """The labels_csv layout with three class-tinted classes of 48x48 PNGs."""
    rng = np.random.default_rng(0)
    train, test = _folders(raw)
    labels = [c for c in classes for _ in range(per_class)]
    for i, cls in enumerate(labels, start=1):
        arr = rng.integers(0, 120, size=(48, 48, 3), dtype=np.uint8)
        arr[..., classes.index(cls)] += 120                          # a class-coloured tint
        Image.fromarray(arr).save(train / f"{i}.png")
    (raw / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in enumerate(labels, 1)))
    for i in range(1, n_test + 1):
        Image.fromarray(rng.integers(0, 255, size=(48, 48, 3), dtype=np.uint8)).save(test / f"{i}.png")
    write_sample(raw / "sampleSubmission.csv", range(1, n_test + 1), classes[0])
    return raw


# ------------------------------------------------------------------ awkward image files
def jpeg_bytes(rng: np.random.Generator, w: int = 64, h: int = 52) -> bytes:
    b = io.BytesIO()
    noise_image(rng, w, h).save(b, "JPEG", quality=95)
    return b.getvalue()


def exif_rotated(path: Path) -> None:
    """60x40, left half red, right half blue, EXIF orientation 6 (shown rotated 90 degrees clockwise)."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def huge_jpeg(path: Path) -> None:
    """8000x6000: 144 MB decoded; top-left quarter red so the result can be checked."""
    im = Image.new("RGB", (8000, 6000), (30, 60, 90))
    ImageDraw.Draw(im).rectangle([0, 0, 3999, 2999], fill=(200, 10, 10))
    im.save(path, "JPEG", quality=85)


def png_16bit(path: Path) -> None:
    a = np.tile(np.linspace(0, 65535, 40, dtype=np.uint16), (30, 1))  # a horizontal ramp over the full 16-bit range
    Image.fromarray(a).save(path, "PNG")


def palette_png(path: Path, colour=(0, 0, 255)) -> None:
    Image.new("RGB", (40, 30), colour).convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG")


def corrupt_jpeg(path: Path, rng: np.random.Generator) -> None:
    good = jpeg_bytes(rng)
    path.write_bytes(good[:20] + bytes(rng.integers(0, 256, size=len(good) - 20, dtype=np.uint8)))


# Training files that cannot be read: skipped and listed with a reason.
BAD_TRAIN = {"cat.100.jpg": "empty", "cat.101.jpg": "truncated", "cat.102.jpg": "corrupt", "cat.103.jpg": "text"}
# Training files that can be converted: present in the manifest.
ODD_TRAIN = ["dog.100.jpg", "dog.101.jpg", "dog.102.jpg", "dog.103.jpg", "dog.104.jpg", "dog.105.jpg",
             "dog.106.jpg", "dog.107.jpg"]
BAD_TEST = {9: "empty", 10: "truncated", 11: "text"}


def faulty_dogs_vs_cats(raw: Path, n_cats: int = 10, n_dogs: int = 6, n_test: int = 8, huge: bool = True) -> Path:
    """Dogs-vs-Cats layout with every kind of awkward image (see BAD_TRAIN, ODD_TRAIN, BAD_TEST)."""
    rng = np.random.default_rng(0)
    tr, te = raw / "train", raw / "test"
    tr.mkdir(parents=True)
    te.mkdir(parents=True)
    for n in range(n_cats):
        noise_image(rng, tint=0).save(tr / f"cat.{n}.jpg", quality=95)
    for n in range(n_dogs):
        noise_image(rng, tint=2).save(tr / f"dog.{n}.jpg", quality=95)
    # unreadable
    (tr / "cat.100.jpg").write_bytes(b"")
    good = jpeg_bytes(rng)
    (tr / "cat.101.jpg").write_bytes(good[: len(good) // 2])
    corrupt_jpeg(tr / "cat.102.jpg", rng)
    (tr / "cat.103.jpg").write_text("this is not an image\n")
    # convertible
    Image.new("L", (50, 40), 128).save(tr / "dog.100.jpg", "JPEG")                     # grayscale
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(tr / "dog.101.jpg", "JPEG")     # CMYK: red
    Image.new("RGBA", (50, 40), (255, 0, 0, 128)).save(tr / "dog.102.jpg", "PNG")      # RGBA PNG named .jpg
    palette_png(tr / "dog.103.jpg")                                                     # palette PNG named .jpg
    png_16bit(tr / "dog.104.jpg")                                                       # 16-bit PNG named .jpg
    exif_rotated(tr / "dog.105.jpg")                                                    # EXIF orientation 6
    if huge:
        huge_jpeg(tr / "dog.106.jpg")                                                   # 8000x6000
    else:
        noise_image(rng, 300, 200).save(tr / "dog.106.jpg", quality=90)
    Image.new("RGB", (1, 1), (0, 200, 0)).save(tr / "dog.107.jpg", "JPEG")              # 1x1
    for i in range(1, n_test + 1):
        noise_image(rng).save(te / f"{i}.jpg", quality=95)
    (te / "9.jpg").write_bytes(b"")
    good = jpeg_bytes(rng)
    (te / "10.jpg").write_bytes(good[: len(good) // 3])
    (te / "11.jpg").write_text("not an image either")
    write_sample(raw / "sample_submission.csv", range(1, n_test + 4))
    return raw


def odd_cifar(raw: Path) -> Path:
    """CIFAR layout, two of each class, plus 21.png (16-bit, cat), 22.png (palette, green, dog), 23.png (a corrupt
    PNG, frog); test/1..5.png and an unreadable test/6.png."""
    train, test = _folders(raw)
    rng = np.random.default_rng(1)
    rows = []
    for i, cls in enumerate(CIFAR_CLASSES * 2, start=1):
        noise_image(rng, 32, 32, tint=i).save(train / f"{i}.png")
        rows.append((i, cls))
    png_16bit(train / "21.png")
    palette_png(train / "22.png", (0, 255, 0))
    (train / "23.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows += [(21, "cat"), (22, "dog"), (23, "frog")]
    (raw / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in rows))
    for i in range(1, 6):
        noise_image(rng, 32, 32).save(test / f"{i}.png")
    (test / "6.png").write_bytes(b"garbage")
    write_sample(raw / "sampleSubmission.csv", range(1, 7), "cat")
    return raw


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
