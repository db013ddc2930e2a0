"""Fault injection (issue 6): bad images, bad labels and ids, killed and diverging training, full disks,
and a property-based check of the submission writer.

Every test builds its own raw folder under tmp_path and points every output (and the MLflow store) there.
The subprocess-heavy tests are marked slow (they still run in CI).
"""
from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from conftest import ROOT, TINY, compose, path_overrides, run_cli
from src.common import UserError, atomic_path, read_json, validate_config, write_json

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ================================================================== raw folders with faults
def _noise(rng: np.random.Generator, w: int = 64, h: int = 52, tint: int | None = None) -> Image.Image:
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    if tint is not None:
        arr[..., tint % 3] = np.maximum(arr[..., tint % 3], 200)
    return Image.fromarray(arr, "RGB")


def _jpeg_bytes(rng: np.random.Generator, w: int = 64, h: int = 52) -> bytes:
    b = io.BytesIO()
    _noise(rng, w, h).save(b, "JPEG", quality=95)
    return b.getvalue()


def _sample(path: Path, ids, label: str = "0.5") -> None:
    path.write_text("id,label\n" + "".join(f"{i},{label}\n" for i in ids))


def _exif_rotated(path: Path) -> None:
    """60x40, left half red, right half blue, EXIF orientation 6 (shown rotated 90 degrees clockwise)."""
    a = np.zeros((40, 60, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, "JPEG", exif=exif.tobytes(), quality=95)


def _huge_jpeg(path: Path) -> None:
    """8000x6000: 144 MB decoded; top-left quarter red so the result can be checked."""
    im = Image.new("RGB", (8000, 6000), (30, 60, 90))
    ImageDraw.Draw(im).rectangle([0, 0, 3999, 2999], fill=(200, 10, 10))
    im.save(path, "JPEG", quality=85)


def _write_16bit_png(path: Path) -> None:
    a = np.tile(np.linspace(0, 65535, 40, dtype=np.uint16), (30, 1))  # a horizontal ramp over the full 16-bit range
    Image.fromarray(a).save(path, "PNG")


def _write_palette(path: Path, colour=(0, 0, 255)) -> None:
    Image.new("RGB", (40, 30), colour).convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG")


def _write_corrupt(path: Path, rng: np.random.Generator) -> None:
    good = _jpeg_bytes(rng)
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
        _noise(rng, tint=0).save(tr / f"cat.{n}.jpg", quality=95)
    for n in range(n_dogs):
        _noise(rng, tint=2).save(tr / f"dog.{n}.jpg", quality=95)
    # unreadable
    (tr / "cat.100.jpg").write_bytes(b"")
    good = _jpeg_bytes(rng)
    (tr / "cat.101.jpg").write_bytes(good[: len(good) // 2])
    _write_corrupt(tr / "cat.102.jpg", rng)
    (tr / "cat.103.jpg").write_text("this is not an image\n")
    # convertible
    Image.new("L", (50, 40), 128).save(tr / "dog.100.jpg", "JPEG")                     # grayscale
    Image.new("CMYK", (50, 40), (0, 255, 255, 0)).save(tr / "dog.101.jpg", "JPEG")     # CMYK: red
    Image.new("RGBA", (50, 40), (255, 0, 0, 128)).save(tr / "dog.102.jpg", "PNG")      # RGBA PNG named .jpg
    _write_palette(tr / "dog.103.jpg")                                                  # palette PNG named .jpg
    _write_16bit_png(tr / "dog.104.jpg")                                                # 16-bit PNG named .jpg
    _exif_rotated(tr / "dog.105.jpg")                                                   # EXIF orientation 6
    if huge:
        _huge_jpeg(tr / "dog.106.jpg")                                                  # 8000x6000
    else:
        _noise(rng, 300, 200).save(tr / "dog.106.jpg", quality=90)
    Image.new("RGB", (1, 1), (0, 200, 0)).save(tr / "dog.107.jpg", "JPEG")              # 1x1
    for i in range(1, n_test + 1):
        _noise(rng).save(te / f"{i}.jpg", quality=95)
    (te / "9.jpg").write_bytes(b"")
    good = _jpeg_bytes(rng)
    (te / "10.jpg").write_bytes(good[: len(good) // 3])
    (te / "11.jpg").write_text("not an image either")
    _sample(raw / "sample_submission.csv", range(1, n_test + 4))
    return raw


def dvc_cfg(tmp: Path, raw: Path, *extra: str):
    cfg = compose(*path_overrides(tmp), "dataset=dogs_vs_cats", f"dataset.raw_dir={raw}", "dataset.image_size=48",
                  "prepare.workers=1", "prepare.preview=false", *extra)
    validate_config(cfg)
    return cfg


def _skipped(report: dict) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in report["skipped"]}


# ================================================================== 1. bad images
def test_prepare_survives_bad_images(tmp_path: Path):
    from src.prepare import prepare

    raw = faulty_dogs_vs_cats(tmp_path / "raw")
    out = prepare(dvc_cfg(tmp_path, raw))
    report = read_json(out / "report.json")
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    test = pd.read_csv(out / "test.csv")
    arr = np.load(out / "train.npy", mmap_mode="r")

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
    assert arr.shape == (len(train) + len(BAD_TRAIN), 48, 48, 3)  # rows of skipped files stay unused

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
    """Prepare decodes an 8000x6000 JPEG (144 MB as RGB) in draft mode: peak memory barely moves."""
    big = tmp_path / "big.jpg"
    _huge_jpeg(big)
    code = ("import resource, sys; sys.path.insert(0, sys.argv[2]); from src.prepare import _load_job; "
            "import numpy as np; _load_job((sys.argv[1].replace('big', 'small'), 48, 'stretch')); "
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; img, err = _load_job((sys.argv[1], 48, 'stretch')); "
            "r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; assert err is None and img.shape == (48, 48, 3), err; "
            "print((r1 - r0) / 1024)")
    _noise(np.random.default_rng(0)).save(tmp_path / "small.jpg")
    r = subprocess.run([sys.executable, "-c", code, str(big), str(ROOT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grown_mb = float(r.stdout.strip().splitlines()[-1])
    assert grown_mb < 48, f"decoding the 8000x6000 JPEG grew peak memory by {grown_mb:.0f} MB (draft mode not used?)"


def test_cifar_layout_odd_pngs(tmp_path: Path):
    """labels_csv layout: 16-bit and palette PNGs are converted, a corrupt one is skipped, a corrupt test image flagged."""
    from src.prepare import prepare

    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i, cls in enumerate(CIFAR_CLASSES * 2, start=1):
        _noise(rng, 32, 32, tint=i).save(raw / "train" / f"{i}.png")
        rows.append((i, cls))
    _write_16bit_png(raw / "train" / "21.png")
    _write_palette(raw / "train" / "22.png", (0, 255, 0))
    (raw / "train" / "23.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows += [(21, "cat"), (22, "dog"), (23, "frog")]
    (raw / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i},{c}\n" for i, c in rows))
    for i in range(1, 6):
        _noise(rng, 32, 32).save(raw / "test" / f"{i}.png")
    (raw / "test" / "6.png").write_bytes(b"garbage")
    _sample(raw / "sampleSubmission.csv", range(1, 7), "cat")

    cfg = compose(*path_overrides(tmp_path), "dataset=cifar10", f"dataset.raw_dir={raw}", "prepare.workers=1",
                  "prepare.preview=false")
    validate_config(cfg)
    out = prepare(cfg)
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    test = pd.read_csv(out / "test.csv")
    report = read_json(out / "report.json")
    arr = np.load(out / "train.npy", mmap_mode="r")
    assert {"21", "22"} <= set(train["id"]) and "23" not in set(train["id"])
    assert set(_skipped(report)) == {"23.png"}
    assert train.loc[train["id"] == "21", "class"].item() == "cat"
    pal = np.asarray(arr[int(train.loc[train["id"] == "22", "index"].item())])
    assert np.all(np.abs(pal[16, 16].astype(int) - [0, 255, 0]) <= 3)
    ramp = np.asarray(arr[int(train.loc[train["id"] == "21", "index"].item())])[16, :, 0].astype(int)
    assert ramp[0] < 20 and ramp[-1] > 235
    assert test["ok"].tolist() == [True] * 5 + [False]


@pytest.mark.slow
def test_unreadable_test_images_predicted_with_prior(tmp_path: Path):
    """prepare -> train -> predict on the faulty folder: the CSV has every test id; unreadable ones hold the prior."""
    from src.predict import predict
    from src.train import train

    raw = faulty_dogs_vs_cats(tmp_path / "raw", huge=False)
    cfg = dvc_cfg(tmp_path, raw, "train.epochs=1", "train.batch_size=16", "tracking.enabled=false")
    train(cfg)
    record = predict(cfg)
    sub = pd.read_csv(record["csv"])
    assert sub["id"].tolist() == list(range(1, 12))
    prior = (6 + len(ODD_TRAIN)) / (10 + 6 + len(ODD_TRAIN))   # P(dog) over the readable training images
    got = sub.set_index("id")["label"]
    for i in BAD_TEST:
        assert got[i] == pytest.approx(prior, abs=1e-12)
    assert sub["label"].between(record["clip"], 1 - record["clip"]).all()


# ================================================================== 2. bad labels and ids
def _good_dvc(raw: Path, n: int = 4, n_test: int = 4) -> Path:
    rng = np.random.default_rng(2)
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir(parents=True)
    for k in range(n):
        for j, cls in enumerate(("cat", "dog")):
            _noise(rng, 40, 40, tint=j).save(raw / "train" / f"{cls}.{k}.jpg")
    for i in range(1, n_test + 1):
        _noise(rng, 40, 40).save(raw / "test" / f"{i}.jpg")
    _sample(raw / "sample_submission.csv", range(1, n_test + 1))
    return raw


def _scan(tmp: Path, raw: Path, *extra: str):
    from src.prepare import scan

    return scan(dvc_cfg(tmp, raw, *extra), raw)


def test_misnamed_files_are_reported(tmp_path: Path):
    raw = _good_dvc(tmp_path / "raw")
    rng = np.random.default_rng(3)
    for name in ("horse.1.jpg", "cat.jpg", "cat.x.jpg", "cat1.jpg", "dog.2.3.jpg"):
        _noise(rng, 40, 40).save(raw / "train" / name, "JPEG")
    (raw / "train" / "notes.txt").write_text("hello")
    (raw / "train" / "subdir").mkdir()
    _noise(rng, 40, 40).save(raw / "test" / "abc.jpg", "JPEG")
    s = _scan(tmp_path, raw)
    reasons = {Path(x["path"]).name: x["reason"] for x in s.skipped}
    assert set(reasons) == {"horse.1.jpg", "cat.jpg", "cat.x.jpg", "cat1.jpg", "dog.2.3.jpg", "notes.txt", "subdir",
                            "abc.jpg"}
    assert "<class>.<number>" in reasons["horse.1.jpg"]
    assert "numeric id" in reasons["abc.jpg"]
    assert len(s.train) == 8 and s.test["id"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("fault, message", [
    ("dup_train", "appears twice"),
    ("dup_test", "appears twice"),
    ("missing_class", "no training images of class"),
    ("sample_missing_id", "disagrees with sample_submission.csv"),
    ("sample_extra_image", "disagrees with sample_submission.csv"),
    ("sample_bad_id", "sample_submission.csv"),
    ("sample_dup_id", "sample_submission.csv"),
    ("sample_no_id_column", "no 'id' column"),
    ("empty_test", "no test images"),
])
def test_bad_ids_are_one_line_errors(tmp_path: Path, fault: str, message: str):
    raw = _good_dvc(tmp_path / "raw")
    rng = np.random.default_rng(4)
    if fault == "dup_train":
        _noise(rng, 40, 40).save(raw / "train" / "cat.1.jpeg", "JPEG")
    elif fault == "dup_test":
        _noise(rng, 40, 40).save(raw / "test" / "01.jpg", "JPEG")
    elif fault == "missing_class":
        for p in (raw / "train").glob("dog.*"):
            p.unlink()
    elif fault == "sample_missing_id":
        (raw / "test" / "3.jpg").unlink()
    elif fault == "sample_extra_image":
        _noise(rng, 40, 40).save(raw / "test" / "5.jpg", "JPEG")
    elif fault == "sample_bad_id":
        (raw / "sample_submission.csv").write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\nfive,0.5\n")
    elif fault == "sample_dup_id":
        (raw / "sample_submission.csv").write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n4,0.5\n")
    elif fault == "sample_no_id_column":
        (raw / "sample_submission.csv").write_text("image,label\n1,0.5\n")
    elif fault == "empty_test":
        for p in (raw / "test").iterdir():
            p.unlink()
    with pytest.raises(UserError) as e:
        _scan(tmp_path, raw)
    msg = str(e.value)
    assert message in msg and "\n" not in msg


def _cifar_raw(raw: Path, labels: str, n_test: int = 3) -> Path:
    rng = np.random.default_rng(5)
    (raw / "train").mkdir(parents=True)
    (raw / "test").mkdir(parents=True)
    for i in range(1, 5):
        _noise(rng, 32, 32).save(raw / "train" / f"{i}.png")
    for i in range(1, n_test + 1):
        _noise(rng, 32, 32).save(raw / "test" / f"{i}.png")
    (raw / "trainLabels.csv").write_text(labels)
    _sample(raw / "sampleSubmission.csv", range(1, n_test + 1), "cat")
    return raw


def _scan_cifar(tmp: Path, raw: Path):
    from src.prepare import scan

    cfg = compose(*path_overrides(tmp), "dataset=cifar10", f"dataset.raw_dir={raw}", "dataset.classes=[cat,dog]")
    validate_config(cfg)
    return scan(cfg, raw)


def test_labels_csv_rows_and_images_that_do_not_pair_up(tmp_path: Path):
    raw = _cifar_raw(tmp_path / "raw", "id,label\n1,cat\n2,dog\n3,cat\n7,dog\n8,cat\n")   # 4.png has no row; 7, 8 no image
    _noise(np.random.default_rng(6), 32, 32).save(raw / "train" / "x.png")
    s = _scan_cifar(tmp_path, raw)
    assert s.train["id"].tolist() == ["1", "2", "3"]
    assert s.train["class"].tolist() == ["cat", "dog", "cat"]
    reasons = {Path(x["path"]).name: x["reason"] for x in s.skipped}
    assert "no row in trainLabels.csv" in reasons["4.png"] and "numeric id" in reasons["x.png"]
    assert any("2 id(s) in trainLabels.csv have no image" in w for w in s.warnings)


@pytest.mark.parametrize("labels, message", [
    ("id,label\n1,cat\n2,dog\n3,horse\n4,cat\n", "unknown class name(s) 'horse'"),
    ("id,label\n1,cat\n2,dog\n3,\n4,cat\n", "an empty label"),
    ("id,label\n1,cat\n2,dog\n2,cat\n3,cat\n4,dog\n", "id 2 appears 2 times"),
    ("image,class\n1,cat\n2,dog\n", "expected the header 'id,label'"),
])
def test_bad_labels_csv(tmp_path: Path, labels: str, message: str):
    raw = _cifar_raw(tmp_path / "raw", labels)
    with pytest.raises(UserError) as e:
        _scan_cifar(tmp_path, raw)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_bad_ids_through_the_cli(tmp_path: Path):
    """A user-facing data error: exit 2, one line on stderr starting with 'error:', no traceback, no outputs."""
    raw = _good_dvc(tmp_path / "raw")
    (raw / "test" / "2.jpg").unlink()
    r = run_cli("src.prepare", *path_overrides(tmp_path), "dataset=dogs_vs_cats", f"dataset.raw_dir={raw}",
                "prepare.workers=1", f"hydra.run.dir={tmp_path}/hydra")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "2" in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "processed").exists()


# ================================================================== 4. interrupted training
def _tiny(**over: str) -> list[str]:
    keys = {o.split("=")[0] for o in over.values()}
    return [o for o in TINY if o.split("=")[0] not in keys] + list(over.values())


def _train_cmd(base: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "src.train", *_tiny(e=f"train.epochs={epochs}"), *path_overrides(base),
            "train.early_stopping_patience=0", f"hydra.run.dir={base}/hydra"]


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log.with_suffix(".out"), "w"),
                            stderr=open(log.with_suffix(".err"), "w"))


def _wait_until(proc: subprocess.Popen, cond, log: Path, timeout: float = 400) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before the expected point:\n"
                        f"{log.with_suffix('.out').read_text()[-2000:]}\n{log.with_suffix('.err').read_text()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("training did not reach the expected point in time")
        time.sleep(0.05)


def _state(ckpt: Path) -> dict | None:
    try:
        return read_json(ckpt / "state.json")   # written atomically: it parses whenever it exists
    except FileNotFoundError:
        return None


def _check_checkpoint(ckpt: Path) -> dict:
    """After a kill: state.json names only complete files; leftovers are dot-named temporaries no stage reads."""
    import zipfile

    st = _state(ckpt)
    assert st is not None
    visible = {p.name for p in ckpt.iterdir() if not p.name.startswith(".")}
    assert visible == {"state.json", "last.keras", "best.keras"}, visible
    for name in ("last.keras", "best.keras"):
        with zipfile.ZipFile(ckpt / name) as z:
            assert z.testzip() is None
    assert [h["epoch"] for h in st["history"]] == list(range(1, st["epoch"] + 1))
    return st


def _signal_at_random(proc: subprocess.Popen, sig: int, rng: random.Random, max_delay: float) -> None:
    time.sleep(rng.uniform(0, max_delay))
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=120)


def _mlflow_run(base: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{base}/mlflow.db").get_run(run_id)


@pytest.mark.slow
def test_killed_training_resumes_to_the_configured_epochs(tmp_path: Path):
    """SIGKILL twice at random points, then SIGTERM, then Ctrl-C; the same command finishes the run exactly once,
    with the same history and weights as an uninterrupted run of the same command.

    Resume keeps model, optimizer state, epoch count, history, random-generator states and the MLflow run;
    SIGTERM/SIGINT end the MLflow run KILLED (not RUNNING); no partial file is ever named by the checkpoint or
    read by a stage.
    """
    epochs, steps = 6, -(-38 // 16)   # 38 training images (demo, 24 per class, 20% validation), batch 16
    rng = random.Random(os.getpid() ^ int(time.time()))
    ckpt = tmp_path / "models" / "demo" / "seed_cnn" / "checkpoint"
    cmd = _train_cmd(tmp_path, epochs)

    # 1. SIGKILL at a random point after the first checkpoint
    log = tmp_path / "run1"
    p = _launch(cmd, log)
    _wait_until(p, lambda: ckpt.joinpath("state.json").exists(), log)
    _signal_at_random(p, signal.SIGKILL, rng, 0.4)
    st1 = _check_checkpoint(ckpt)
    run_id = st1["run_id"]
    assert run_id and _mlflow_run(tmp_path, run_id).info.status == "RUNNING"   # SIGKILL: nobody could end it

    import keras

    from src.models import CUSTOM_OBJECTS

    last = keras.saving.load_model(ckpt / "last.keras", custom_objects=CUSTOM_OBJECTS)
    assert int(last.optimizer.iterations.numpy()) == st1["epoch"] * steps      # optimizer state is in the checkpoint

    # 2. SIGKILL at a random point after the resumed run wrote a new checkpoint
    log = tmp_path / "run2"
    p = _launch(cmd, log)
    _wait_until(p, lambda: (_state(ckpt) or {}).get("epoch", 0) > st1["epoch"], log)
    _signal_at_random(p, signal.SIGKILL, rng, 0.4)
    assert f"resuming after epoch {st1['epoch']}" in log.with_suffix(".out").read_text()
    st2 = _check_checkpoint(ckpt)
    assert st2["history"][: st1["epoch"]] == st1["history"] and st2["run_id"] == run_id

    # 3. SIGTERM, then 4. Ctrl-C (SIGINT), each at a random point once the resumed MLflow run is active
    for n, sig, code, word in ((3, signal.SIGTERM, 143, "interrupted (SIGTERM)"), (4, signal.SIGINT, 130, "interrupted")):
        log = tmp_path / f"run{n}"
        p = _launch(cmd, log)
        _wait_until(p, lambda: "resuming after epoch" in log.with_suffix(".out").read_text(), log)
        _signal_at_random(p, sig, rng, 1.0)
        err = log.with_suffix(".err").read_text()
        assert p.returncode == code, err
        assert err.strip().splitlines()[-1] == word, err
        # no traceback of ours; Python may print "Exception ignored in ..." when the signal lands in a gc callback
        assert "Traceback" not in err or "Exception ignored in" in err, err
        r = _mlflow_run(tmp_path, run_id)
        assert r.info.status == "KILLED" and "interrupted" in r.data.tags.get("error", ""), r.info
        st = _check_checkpoint(ckpt)
        assert st["history"][: st2["epoch"]] == st2["history"]

    # 5. the same command again finishes the run
    log = tmp_path / "run5"
    p = _launch(cmd, log)
    assert p.wait(timeout=600) == 0, log.with_suffix(".err").read_text()[-3000:]
    model_dir = ckpt.parent
    history = read_json(model_dir / "history.json")
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert history[: st2["epoch"]] == st2["history"]
    info = read_json(model_dir / "run.json")
    assert info["run_id"] == run_id and info["epochs_run"] == epochs
    r = _mlflow_run(tmp_path, run_id)
    assert r.info.status == "FINISHED"
    from mlflow.tracking import MlflowClient

    logged = [m.step for m in MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run_id, "loss")]
    assert len(logged) == len(set(logged)) and set(logged) <= set(range(1, epochs + 1)) and epochs in logged
    assert not ckpt.exists()                                               # finished: the checkpoint is cleared
    strays = [p for d in (model_dir, tmp_path / "processed" / "demo") for p in d.rglob(".*")]
    assert strays == [], strays                                            # no temporaries left beside outputs
    model = keras.saving.load_model(model_dir / "model.keras", custom_objects=CUSTOM_OBJECTS)
    assert model.count_params() == last.count_params()

    # 6. the killed-and-resumed run trained exactly as an uninterrupted one: each epoch's batches depend on
    # (seed, epoch) only, and the augmentation/dropout generators' states come back with the checkpoint
    log = tmp_path / "run6"
    p = _launch([*cmd, "name=uninterrupted"], log)
    assert p.wait(timeout=600) == 0, log.with_suffix(".err").read_text()[-3000:]
    plain = read_json(model_dir.parent / "uninterrupted" / "history.json")
    for key in ("loss", "val_log_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in history], [h[key] for h in plain], rtol=1e-5, err_msg=key)
    other = keras.saving.load_model(model_dir.parent / "uninterrupted" / "model.keras", custom_objects=CUSTOM_OBJECTS)
    for w, v in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-6)


# ================================================================== 5. numerical failure
def _only_run(base: Path, experiment: str = "kagglepipe-demo"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{base}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def _tiny_cfg(base: Path, *extra: str):
    cfg = compose(*_tiny(), *path_overrides(base), *extra)
    validate_config(cfg)
    return cfg


@pytest.mark.slow
def test_absurd_learning_rate_stops_with_one_line_and_failed_run(tmp_path: Path):
    from src.train import train

    with pytest.raises(UserError) as e:
        train(_tiny_cfg(tmp_path, "train.lr=1e6", "train.optimizer=sgd", "train.epochs=3"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training diverged:") and "train.lr" in msg, msg
    assert "became nan" in msg or "became inf" in msg, msg
    run = _only_run(tmp_path)
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["error"]
    assert not (tmp_path / "models" / "demo" / "seed_cnn" / "model.keras").exists()   # nothing diverged is published


@pytest.mark.slow
def test_divergence_after_a_good_epoch_keeps_the_best_checkpoint(tmp_path: Path, monkeypatch):
    """The loss turns NaN in epoch 2 (injected): the run stops there, epoch 1's checkpoint is kept and named."""
    import src.train as train_mod

    class PoisonedEpochEnd(train_mod.EpochEnd):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                logs = {**(logs or {}), "loss": float("nan")}
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(train_mod, "EpochEnd", PoisonedEpochEnd)
    with pytest.raises(UserError) as e:
        train_mod.train(_tiny_cfg(tmp_path, "train.epochs=3"))
    msg = str(e.value)
    ckpt = tmp_path / "models" / "demo" / "seed_cnn" / "checkpoint"
    assert "\n" not in msg and "loss became nan at epoch 2" in msg and str(ckpt / "best.keras") in msg, msg
    st = _check_checkpoint(ckpt)
    assert st["epoch"] == 1 and st["best_epoch"] == 0
    run = _only_run(tmp_path)
    assert run.info.status == "FAILED" and "loss became nan" in run.data.tags["error"]


# ================================================================== 6. full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_path_turns_enospc_into_user_error(tmp_path: Path, monkeypatch):
    target = tmp_path / "out" / "report.json"
    write_json(target, {"old": True})
    # the disk fills while the content is written ...
    with pytest.raises(UserError) as e:
        with atomic_path(target) as tmp:
            tmp.write_text("{partial")
            _enospc()
    assert str(target) in str(e.value) and "no space left" in str(e.value) and "\n" not in str(e.value)
    # ... or at the final rename
    monkeypatch.setattr(os, "replace", _enospc)
    with pytest.raises(UserError):
        write_json(target, {"new": True})
    monkeypatch.undo()
    assert read_json(target) == {"old": True}
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]     # no temporaries left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)              # outputs get the usual permissions


def test_prepare_disk_full_while_writing_manifests(tmp_path: Path, monkeypatch):
    from src.prepare import is_up_to_date, prepare

    raw = _good_dvc(tmp_path / "raw")
    out = prepare(dvc_cfg(tmp_path, raw))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "test.csv":
            _enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    cfg = dvc_cfg(tmp_path, raw, "dataset.val_fraction=0.5")           # a new split: prepare runs again
    with pytest.raises(UserError) as e:
        prepare(cfg)
    monkeypatch.undo()
    assert str(out / "test.csv") in str(e.value) and "no space left" in str(e.value)
    assert (out / "test.csv").read_bytes() == before["test.csv"]          # the earlier file, whole
    assert not is_up_to_date(cfg) and not (out / "state.json").exists()   # the half-updated set is marked stale
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    prepare(cfg)                                                          # with space again, it completes
    assert is_up_to_date(cfg)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB tmpfs (needs root and mount; skipped where unavailable)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_prepare_on_a_really_full_disk(tmp_path: Path, small_disk: Path):
    """A real ENOSPC: the memory-mapped image array is reserved up front, so it fails cleanly (no SIGBUS)."""
    from src.prepare import prepare

    raw = _good_dvc(tmp_path / "raw")
    base = [f"paths.processed={small_disk}/processed"]
    out = prepare(dvc_cfg(tmp_path, raw, *base))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "state.json"}
    with pytest.raises(UserError) as e:
        prepare(dvc_cfg(tmp_path, raw, *base, "dataset.image_size=256"))  # 8 x 196 KB no longer fits in 1 MiB
    assert "train.npy" in str(e.value) and "no space left" in str(e.value)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before                                                # earlier outputs intact, no temporaries


@pytest.mark.slow
def test_disk_full_while_checkpointing(tmp_path: Path, monkeypatch):
    """ENOSPC on epoch 2's checkpoint: one clear error naming the file, epoch 1's checkpoint intact, run FAILED."""
    import src.common as common
    from src.train import train

    real_replace = os.replace
    calls = {"last.keras": 0}

    def replace(src, dst):
        if Path(dst).name == "last.keras":
            calls["last.keras"] += 1
            if calls["last.keras"] == 2:
                _enospc()
        real_replace(src, dst)

    monkeypatch.setattr(common.os, "replace", replace)
    with pytest.raises(UserError) as e:
        train(_tiny_cfg(tmp_path, "train.epochs=3"))
    monkeypatch.undo()
    ckpt = tmp_path / "models" / "demo" / "seed_cnn" / "checkpoint"
    assert str(ckpt / "last.keras") in str(e.value) and "no space left" in str(e.value) and "\n" not in str(e.value)
    st = _check_checkpoint(ckpt)
    assert st["epoch"] == 1
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]
    assert _only_run(tmp_path).info.status == "FAILED"


# ================================================================== 7. the submission writer, property-based
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
_prob = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, -0.0, 5e-324, 1 - 2**-53, 0.1, 1 / 3]))


@st.composite
def _submission_case(draw):
    kind = draw(st.sampled_from(["probability", "class_name"]))
    n = draw(st.integers(0, 25))
    unique = draw(st.booleans()) or n == 0
    ids = draw(st.lists(st.integers(-3, 10**12), min_size=n, max_size=n, unique=unique))
    values = st.one_of(_prob, _any_float) if draw(st.integers(0, 3)) == 0 else _prob  # mostly valid probabilities
    if kind == "probability":
        classes = ["cat", "dog"]
        cols = draw(st.sampled_from([None, 2]))
    else:
        k = draw(st.integers(2, 5))
        name = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=8)
        classes = draw(st.lists(name, min_size=k, max_size=k, unique=True))
        cols = k
    rows = n + draw(st.sampled_from([0] * 8 + [1, -1])) if n else n   # now and then one prediction too many/few
    shape = (max(rows, 0),) if cols is None else (max(rows, 0), cols)
    probs = np.array(draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                     dtype=np.float64).reshape(shape)
    clip = draw(st.sampled_from([None, None, 1e-15, 0.005]))
    return kind, ids, probs, classes, clip


def _bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).view(np.int64)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_submission_case())
def test_submission_writer_round_trips_or_refuses(case):
    import tempfile

    from src.submission import SubmissionError, build, validate, write

    kind, ids, probs, classes, clip = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "submission.csv"
        try:
            df = build(ids, probs, classes, kind)
            validate(df, kind, classes, clip=clip)
        except SubmissionError as e:
            assert "\n" not in str(e)
            assert not path.exists()
            return
        write(df, path)
        assert sorted(os.listdir(d)) == ["submission.csv"]

        # what a valid file must be, checked independently of validate()
        assert len(set(ids)) == len(ids) > 0 and len(probs) == len(ids)
        back = pd.read_csv(path, dtype={"label": str} if kind == "class_name" else None, keep_default_na=False)
        assert list(back.columns) == ["id", "label"]
        assert back["id"].tolist() == sorted(ids)                        # every id once, numeric order
        order = np.argsort(np.asarray(ids), kind="stable")
        if kind == "probability":
            p = probs if probs.ndim == 1 else probs[:, 1]
            expected = p[order]
            assert np.all(np.isfinite(expected)) and np.all((expected >= 0) & (expected <= 1))
            assert np.array_equal(_bits(back["label"].to_numpy()), _bits(expected))   # bit for bit, each at its id
        else:
            assert np.all(np.isfinite(probs))                             # a NaN row never becomes a class name
            expected = [classes[i] for i in probs.argmax(axis=1)[order]]
            assert back["label"].tolist() == expected
        validate(back, kind, classes, clip=clip)                          # the file on disk passes the same checks


def test_a_second_run_with_the_same_name_is_refused_while_the_first_trains(tmp_path: Path):
    """Two runs with one dataset and name would share a checkpoint folder (and the first to finish would delete
    the other's): while one trains, the folder is locked and a second gets one line, before any work."""
    import fcntl

    from src.train import train

    cfg = _tiny_cfg(tmp_path, "tracking.enabled=false")
    model_dir = tmp_path / "models" / "demo" / "seed_cnn"
    model_dir.mkdir(parents=True)
    fd = os.open(model_dir, os.O_RDONLY)  # what a running `python -m src.train` holds
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(UserError, match=r"another training run is writing to .*seed_cnn \(name=seed_cnn\)"):
            train(cfg)
        assert not (tmp_path / "processed").exists()  # refused before any work
    finally:
        os.close(fd)
    assert train(cfg)["epochs_run"] == 1  # released: the same command runs
