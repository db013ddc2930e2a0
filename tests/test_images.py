"""Decoding and resizing (src/images.py), checked on the pixels prepare stores. Odd files are converted to (size, size,
3) uint8 RGB: grayscale, CMYK, RGBA and palette PNGs (even named .jpg), 16-bit PNGs (scaled, not clipped), EXIF-
rotated JPEGs, a 1x1 image and an 8000x6000 JPEG (decoded in draft mode, so its memory stays small); unreadable ones
(empty, truncated, corrupt, text) are skipped with a reason in training and kept, flagged, in the test set. The
resize modes stretch, crop and pad (black bars, aspect kept) fill the square as they say. No TensorFlow here.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from conftest import ROOT, cifar_cfg, dogs_cfg, path_overrides, checked
from imagegen import BAD_TEST, BAD_TRAIN, ODD_TRAIN, dogs_vs_cats, faulty_dogs_vs_cats, huge_jpeg, noise_image, odd_cifar
from src import prepare
from src.files import read_json
from src.images import load_image
from src.paths import Layout

SIZE = 48


def _outputs(lay: Layout) -> tuple[pd.DataFrame, pd.DataFrame, dict, np.ndarray]:
    return (pd.read_csv(lay.train_manifest, dtype={"id": str}), pd.read_csv(lay.test_manifest), read_json(lay.report),
            np.load(lay.train_images, mmap_mode="r"))


def _skipped(report: dict) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in report["skipped"]}


# ------------------------------------------------------------------ odd and broken files, through prepare
def test_prepare_survives_bad_images(tmp_path: Path):
    raw = faulty_dogs_vs_cats(tmp_path / "raw")
    train, test, report, arr = _outputs(prepare.run(dogs_cfg(tmp_path, raw)))

    skipped = _skipped(report)
    assert set(skipped) == set(BAD_TRAIN), skipped
    assert "0 bytes" in skipped["cat.100.jpg"]
    assert "truncated" in skipped["cat.101.jpg"]
    assert "not a readable image" in skipped["cat.103.jpg"]
    assert all(r.strip() for r in skipped.values())
    assert report["skipped_count"] == len(BAD_TRAIN)

    ids = set(train["id"])
    assert {Path(f).stem for f in ODD_TRAIN} <= ids
    assert not ({Path(f).stem for f in BAD_TRAIN} & ids)
    assert len(train) == 10 + 6 + len(ODD_TRAIN)
    assert arr.shape == (len(train) + len(BAD_TRAIN), SIZE, SIZE, 3)  # rows of skipped files stay unused

    def img(stem: str) -> np.ndarray:
        return np.asarray(arr[int(train.loc[train["id"] == stem, "index"].iloc[0])], dtype=np.int32)

    assert np.all(np.abs(img("dog.100") - 128) <= 2)                        # grayscale -> grey RGB
    assert np.all(np.abs(img("dog.101")[24, 24] - [255, 0, 0]) <= 10)      # CMYK -> red
    assert np.all(np.abs(img("dog.102")[24, 24] - [255, 127, 127]) <= 3)   # RGBA over white
    assert np.all(np.abs(img("dog.103")[24, 24] - [0, 0, 255]) <= 3)       # palette
    ramp = img("dog.104")[24, :, 0]                                         # 16-bit ramp -> 0..255, not clipped
    assert ramp[0] < 20 and ramp[-1] > 235 and np.all(np.diff(ramp) >= 0)
    rot = img("dog.105")                                                    # EXIF 6: left half (red) is now on top
    assert rot[4, 24, 0] > 200 and rot[4, 24, 2] < 50
    assert rot[43, 24, 2] > 200 and rot[43, 24, 0] < 50
    huge = img("dog.106")
    assert np.all(np.abs(huge[5, 5] - [200, 10, 10]) <= 12) and np.all(np.abs(huge[43, 43] - [30, 60, 90]) <= 12)
    assert np.all(np.abs(img("dog.107") - [0, 200, 0]) <= 12)              # 1x1 stretched

    # corrupt test images keep their row, flagged ok=False
    assert test["id"].tolist() == list(range(1, 12))
    assert test.loc[~test["ok"], "id"].tolist() == sorted(BAD_TEST)
    assert report["unreadable_test_images"] == len(BAD_TEST)
    assert sum("test image" in w for w in report["warnings"]) == len(BAD_TEST)


def test_huge_jpeg_memory_stays_small(tmp_path: Path):
    """An 8000x6000 JPEG (144 MB as RGB) is decoded in draft mode: peak memory barely moves."""
    big = tmp_path / "big.jpg"
    huge_jpeg(big)
    noise_image(np.random.default_rng(0)).save(tmp_path / "small.jpg")
    code = ("import resource, sys; sys.path.insert(0, sys.argv[2]); from src.images import try_load; "
            "try_load(sys.argv[1].replace('big', 'small'), 48, 'stretch'); "
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; img, err = try_load(sys.argv[1], 48, 'stretch'); "
            "r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; assert err is None and img.shape == (48, 48, 3), err; "
            "print((r1 - r0) / 1024)")
    r = subprocess.run([sys.executable, "-c", code, str(big), str(ROOT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grown_mb = float(r.stdout.strip().splitlines()[-1])
    assert grown_mb < 48, f"decoding the 8000x6000 JPEG grew peak memory by {grown_mb:.0f} MB (draft mode not used?)"


def test_cifar_layout_odd_pngs(tmp_path: Path):
    """labels_csv layout: 16-bit and palette PNGs are converted, a corrupt one is skipped, a corrupt test image flagged."""
    raw = odd_cifar(tmp_path / "raw")
    train, test, report, arr = _outputs(prepare.run(cifar_cfg(tmp_path, raw)))
    assert {"21", "22"} <= set(train["id"]) and "23" not in set(train["id"])
    assert set(_skipped(report)) == {"23.png"}
    assert train.loc[train["id"] == "21", "class"].item() == "cat"
    pal = np.asarray(arr[int(train.loc[train["id"] == "22", "index"].item())])
    assert np.all(np.abs(pal[16, 16].astype(int) - [0, 255, 0]) <= 3)
    ramp = np.asarray(arr[int(train.loc[train["id"] == "21", "index"].item())])[16, :, 0].astype(int)
    assert ramp[0] < 20 and ramp[-1] > 235
    assert test["ok"].tolist() == [True] * 5 + [False]


def _cfg(base: Path, *extra: str):
    return checked("prepare", "dataset=dogs_vs_cats", f"dataset.image_size={SIZE}", "prepare.workers=1",
                   *path_overrides(base), *extra)


def test_odd_images_are_converted_and_broken_ones_skipped(tmp_path: Path):
    raw = dogs_vs_cats(tmp_path / "raw" / "dogs_vs_cats", n_per_class=5, n_test=3)
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

    train, _, report, x = _outputs(prepare.run(_cfg(tmp_path)))
    assert set(train["id"]) == {f"{c}.{n}" for c in ("cat", "dog") for n in [*range(5), 50, 51]}
    px = {i: np.asarray(x[k]) for i, k in zip(train["id"], train["index"])}
    assert all(v.shape == (SIZE, SIZE, 3) for v in px.values())
    g = px["cat.50"].astype(int)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all() and abs(g.mean() - 77) < 3
    assert px["cat.51"][..., 0].mean() > 200 and px["cat.51"][..., 1:].mean() < 60
    rgba_px = px["dog.50"]
    assert (rgba_px[:, :20] > 240).all()  # transparent -> white
    assert rgba_px[:, 28:, 2].min() > 240 and rgba_px[:, 28:, :2].max() < 15

    skipped = _skipped(report)
    assert set(skipped) == {"cat.52.jpg", "dog.52.jpg", "cat.53.jpg", "notes.txt"}
    assert report["skipped_count"] == 4
    assert "0 bytes" in skipped["dog.52.jpg"]
    assert all(reason for reason in skipped.values())


# ------------------------------------------------------------------ resize modes
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
    dogs_vs_cats(tmp_path / "raw" / "dogs_vs_cats", n_per_class=4, n_test=3, size=(96, 32))  # 3:1 noise images
    x = np.load(prepare.run(_cfg(tmp_path, "dataset.resize=pad")).train_images)
    assert x.shape == (8, SIZE, SIZE, 3)
    assert x[:, :14].max() == 0 and x[:, -14:].max() == 0 and x[:, 20:28].mean() > 50
    lay = prepare.run(_cfg(tmp_path, "dataset.resize=crop", f"paths.processed={tmp_path}/crop"))
    assert np.load(lay.train_images)[:, :14].mean() > 50


# ------------------------------------------------------------------ the fast JPEG path (OpenCV) against Pillow
@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_jpeg_path_matches_pillows_decode_for_every_exif_orientation(tmp_path: Path, orientation: int):
    """A colour JPEG stretched to the square is decoded by OpenCV at its DCT scale (the fast path, taken here);
    its pixels agree with Pillow's full decode + EXIF transpose + area resize, orientation included."""
    from src import images

    rng = np.random.default_rng(orientation)
    a = np.zeros((200, 330, 3), np.uint8)  # quadrants of distinct colours, plus texture: a wrong turn shows
    a[:100, :165], a[:100, 165:], a[100:, :165], a[100:, 165:] = (230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30)
    a = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(a).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(path) as im:
        assert images.dct_scale(*im.size, 40) == 4                   # 200 >= 4 * 40: decoded at a quarter
        fast = images._fast_jpeg(str(path), 40)
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB").resize((40, 40), Image.Resampling.BOX))
    assert fast is not None and fast.shape == (40, 40, 3) and fast.dtype == np.uint8
    np.testing.assert_array_equal(load_image(str(path), 40), fast)  # what prepare stores
    assert np.abs(fast.astype(int) - reference).mean() < 6          # same picture, same way up
    assert np.abs(fast.astype(int) - np.rot90(reference, 2)).mean() > 40  # (a half turn would be far off)


def _jpeg_bytes(mode: str, **save) -> bytes:
    import io

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)  # 53 wide, 37 high: sides not swapped
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


@pytest.mark.parametrize("mode,save", [("RGB", {}), ("RGB", {"progressive": True}), ("L", {}), ("CMYK", {}),
                                       ("RGB", {"exif": Image.Exif().tobytes()}),
                                       ("RGB", {"icc_profile": b"\0" * 70000})])  # a segment longer than 64 KiB split
def test_jpeg_header_reads_what_pillow_reads(mode: str, save: dict):
    """The fast path's header check agrees with Pillow on size, colour components and EXIF, so it takes the files
    Pillow would call colour JPEGs and leaves the rest (grayscale, CMYK) to Pillow."""
    import io

    from src import images

    data = _jpeg_bytes(mode, **save)
    with Image.open(io.BytesIO(data)) as im:
        expected = (*im.size, len(im.getbands()), "exif" in im.info)
    assert images.jpeg_header(data) == expected
    assert images.jpeg_header(data[:20]) is None               # ends before the frame header
    assert images.jpeg_header(b"\x89PNG\r\n\x1a\n" + data[8:]) is None


def test_fast_path_takes_real_photos_and_decodes_them_as_with_orientation(tmp_path: Path):
    """On the shared Kaggle photos (no EXIF): the header matches Pillow's, and skipping OpenCV's orientation step
    (nothing to turn) gives the same bytes as the orientation-aware decode."""
    import cv2

    from conftest import SHARED_DATA
    from src import images

    photos = sorted((SHARED_DATA / "dogs_vs_cats" / "train").glob("*.jpg"))[::50]
    if not photos:
        pytest.skip("real data not available: ../shared/data/dogs_vs_cats is absent")
    for p in photos:
        data = p.read_bytes()
        with Image.open(p) as im:
            assert images.jpeg_header(data) == (*im.size, 3, False), p.name
            aware = cv2.imdecode(np.frombuffer(data, np.uint8), images.REDUCED_READ[images.dct_scale(*im.size, 150)])
        h, w = aware.shape[:2]
        aware = cv2.resize(aware, (150, 150), interpolation=cv2.INTER_LINEAR if max(w, h) < 300 else cv2.INTER_AREA)
        np.testing.assert_array_equal(load_image(str(p), 150), aware, err_msg=p.name)
