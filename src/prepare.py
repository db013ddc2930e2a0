"""Stage 1, prepare: raw Kaggle layout -> resized uint8 image arrays + manifests with a stable split.

    python -m src.prepare dataset=dogs_vs_cats          # reads data/raw/dogs_vs_cats
    python -m src.prepare dataset=cifar10 prepare.workers=8

Writes into data/processed/<dataset>/:
  train.npy, test.npy   resized images, uint8 (N, size, size, 3), decoded once (memory-mapped by later stages)
  train.csv             id, path, label, class, fold (train|val), index (row in train.npy)
  test.csv              id, path, index, ok (False: unreadable, predicted with the prior)
  classes.json          class names in label order, reused by every later stage
  report.json           counts, every skipped or converted file and why
  preview.png           a contact sheet of resized training images (prepare.preview)
  state.json            fingerprint of inputs (names, sizes, mtimes) + config: a rerun with the same fingerprint does
                        nothing. Machine-specific, so .dvcignore keeps it out of DVC's hash of this folder
"""
from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .common import PROJECT_ROOT, UserError, atomic_path, config_hash, project_path, read_json, write_json, write_text

PREPARE_VERSION = 4  # bump when the output format or resizing changes: forces a rerun
SPLIT_KEYS = ["dataset.name", "dataset.layout", "dataset.labels_csv", "dataset.image_ext", "dataset.classes",
              "dataset.image_size", "dataset.resize", "dataset.val_fraction", "dataset.split_seed",
              "dataset.sample_submission"]
ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = 200_000_000  # 8000x6000 photos are fine; decompression bombs beyond this are skipped


@dataclass
class Scan:
    train: pd.DataFrame  # id, path, label, class
    test: pd.DataFrame   # id (int), path
    skipped: list[dict]  # path, reason
    warnings: list[str]


# ------------------------------------------------------------------ raw layout
def _extract(archive: Path, dest: Path) -> None:
    """Unpack a Kaggle archive (zip or 7z) into dest, atomically (a temporary folder renamed into place)."""
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".extract-{archive.stem}-"))
    try:
        if archive.suffix == ".zip":
            import zipfile

            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        elif archive.suffix == ".7z":
            import py7zr

            with py7zr.SevenZipFile(archive, "r") as z:
                z.extractall(tmp)
        else:
            raise UserError(f"{archive}: unknown archive type; expected .zip or .7z")
        target = dest / archive.stem
        inner = tmp / archive.stem
        os.replace(inner if inner.is_dir() else tmp, target)
    except (OSError, EOFError) as e:
        raise UserError(f"{archive}: cannot unpack it ({e}); delete it and download it again") from e
    except Exception as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{archive}: cannot unpack it ({type(e).__name__}: {e}); delete it and download it again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_raw(cfg: DictConfig) -> Path:
    """Make sure the raw folder holds train/ and test/: generate the demo data or unpack the archives."""
    raw = project_path(cfg.dataset.raw_dir)
    if not (raw / "train").is_dir() and cfg.dataset.get("generate") == "demo":
        from .demo_data import make_demo_dataset

        demo = cfg.dataset.demo
        print(f"prepare: generating the demo dataset in {raw}")
        make_demo_dataset(raw, seed=demo.seed, n_train_per_class=demo.n_train_per_class, n_test=demo.n_test)
    if not raw.is_dir():
        raise UserError(f"raw data folder {raw} not found; put the Kaggle files there (see README, 'Data layout') "
                        f"or run: python -m src.kaggle download dataset={cfg.dataset.name}")
    for part in ("train", "test"):
        if (raw / part).is_dir():
            continue
        for archive in [raw / f"{part}.zip", raw / f"{part}.7z"]:
            if archive.is_file():
                print(f"prepare: unpacking {archive}")
                _extract(archive, raw)
                break
    if not (raw / "train").is_dir():
        raise UserError(f"{raw / 'train'} not found; expected the Kaggle layout (train/ and test/, or train.zip/"
                        f"train.7z and test.zip/test.7z) in {raw}")
    return raw


def _image_files(folder: Path, exts: list[str]) -> tuple[list[Path], list[dict]]:
    files, skipped = [], []
    exts = {"." + e.lower().lstrip(".") for e in exts}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in exts:
            files.append(p)
        else:
            skipped.append({"path": str(p), "reason": f"not an image file of the expected types ({', '.join(sorted(exts))})"})
    return files, skipped


def _numeric_key(s: str) -> tuple[int, str]:
    return (int(s), "") if s.isdigit() else (1 << 62, s)


def scan(cfg: DictConfig, raw: Path) -> Scan:
    """List labelled training images and test images, reporting every file that does not fit the layout."""
    ds = cfg.dataset
    classes = list(ds.classes)
    files, skipped = _image_files(raw / "train", list(ds.image_ext))
    notes: list[str] = []
    rows = []
    if ds.layout == "filename":
        pattern = re.compile(r"^(" + "|".join(map(re.escape, classes)) + r")\.(\d+)$", re.IGNORECASE)
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
            raise UserError(f"{raw / 'train'}: image id {dup!r} appears twice (e.g. .jpg and .jpeg); keep one of them")
    else:
        labels_path = raw / ds.labels_csv
        if not labels_path.is_file():
            raise UserError(f"labels file {labels_path} not found; expected Kaggle's {ds.labels_csv} (id,label) beside train/")
        try:
            labels = pd.read_csv(labels_path, dtype=str)
        except Exception as e:
            raise UserError(f"{labels_path}: cannot read it as CSV ({e})") from e
        if list(labels.columns[:2]) != ["id", "label"]:
            raise UserError(f"{labels_path}: expected the header 'id,label', found {','.join(labels.columns)}")
        labels["id"] = labels["id"].str.strip()
        labels["label"] = labels["label"].str.strip()
        dups = labels.loc[labels["id"].duplicated(), "id"]
        if len(dups):
            raise UserError(f"{labels_path}: id {dups.iloc[0]} appears {int((labels['id'] == dups.iloc[0]).sum())} times "
                            f"({len(dups)} duplicate rows); each id must have exactly one label")
        unknown = sorted(set(labels["label"].dropna()) - set(classes))
        if unknown or labels["label"].isna().any():
            shown = ", ".join(repr(u) for u in unknown[:5]) or "an empty label"
            raise UserError(f"{labels_path}: unknown class name(s) {shown}; dataset.classes allows {classes}")
        by_id = {}
        for p in files:
            if not p.stem.isdigit():
                skipped.append({"path": str(p), "reason": "name is not a numeric id (<id>.<ext>)"})
                continue
            by_id[str(int(p.stem))] = p
        label_of = dict(zip(labels["id"], labels["label"]))
        for i in sorted(by_id, key=int):
            if i not in label_of:
                skipped.append({"path": str(by_id[i]), "reason": f"id {i} has no row in {ds.labels_csv}"})
                continue
            cls = label_of[i]
            rows.append((i, by_id[i], classes.index(cls), cls))
        missing = [i for i in labels["id"] if i not in by_id]
        if missing:
            notes.append(f"{len(missing)} id(s) in {ds.labels_csv} have no image (e.g. {', '.join(missing[:5])}); they are left out")
        train = pd.DataFrame(rows, columns=["id", "path", "label", "class"])
    if train.empty:
        raise UserError(f"{raw / 'train'}: no labelled training images found; check dataset.layout and the file names")
    present = set(train["class"])
    absent = [c for c in classes if c not in present]
    if absent:
        raise UserError(f"{raw / 'train'}: no training images of class(es) {absent}; every class in dataset.classes needs some")

    test_dir = raw / "test"
    if not test_dir.is_dir():
        raise UserError(f"{test_dir} not found; expected the Kaggle test images (test/<id>.<ext>) or test.zip/test.7z in {raw}")
    tfiles, tskipped = _image_files(test_dir, list(ds.image_ext))
    skipped += tskipped
    trows = []
    for p in tfiles:
        if not p.stem.isdigit():
            skipped.append({"path": str(p), "reason": "test file name is not a numeric id (<id>.<ext>); it cannot be submitted"})
            continue
        trows.append((int(p.stem), p))
    test = pd.DataFrame(trows, columns=["id", "path"]).sort_values("id", kind="stable").reset_index(drop=True)
    if test.empty:
        raise UserError(f"{test_dir}: no test images (<id>.{ds.image_ext[0]}) found; the folder is empty or misnamed")
    if test["id"].duplicated().any():
        dup = int(test.loc[test["id"].duplicated(), "id"].iloc[0])
        raise UserError(f"{test_dir}: test id {dup} appears twice (files {', '.join(p.name for p in test.loc[test['id'] == dup, 'path'])}); keep one")
    _check_sample_submission(cfg, raw, test, notes)
    return Scan(train.reset_index(drop=True), test, skipped, notes)


def _check_sample_submission(cfg: DictConfig, raw: Path, test: pd.DataFrame, notes: list[str]) -> None:
    sample_path = raw / str(cfg.dataset.sample_submission)
    ids = test["id"].to_numpy()
    if not sample_path.is_file():
        expected = np.arange(1, len(ids) + 1)
        if not np.array_equal(ids, expected):
            notes.append(f"no {sample_path.name} to check against, and test ids are not 1..{len(ids)} without gaps")
        return
    try:
        sample = pd.read_csv(sample_path)
    except Exception as e:
        raise UserError(f"{sample_path}: cannot read it as CSV ({e})") from e
    if "id" not in sample.columns:
        raise UserError(f"{sample_path}: no 'id' column; expected Kaggle's sample submission (id,label)")
    numeric = pd.to_numeric(sample["id"], errors="coerce")
    bad = sample["id"][numeric.isna() | (numeric.fillna(0) % 1 != 0)]
    if len(bad):
        raise UserError(f"{sample_path}: id {bad.iloc[0]!r} is not an integer; every id must be a test image number")
    if numeric.duplicated().any():
        raise UserError(f"{sample_path}: id {int(numeric[numeric.duplicated()].iloc[0])} appears more than once; "
                        "download the sample submission again")
    sample_ids = set(numeric.astype(int))
    have = set(ids.tolist())
    if sample_ids != have:
        missing = sorted(sample_ids - have)
        extra = sorted(have - sample_ids)
        raise UserError(f"{raw / 'test'} disagrees with {sample_path.name}: {len(missing)} id(s) without an image"
                        f"{' (e.g. ' + ', '.join(map(str, missing[:5])) + ')' if missing else ''}, {len(extra)} image(s) "
                        f"not in the sample{' (e.g. ' + ', '.join(map(str, extra[:5])) + ')' if extra else ''}; "
                        "restore the missing test images or download the test set again")


# ------------------------------------------------------------------ split
def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_folds(ids: pd.Series, labels: pd.Series, val_fraction: float, seed: int) -> np.ndarray:
    """Stratified, seeded and stable: within each class, the images with the smallest hash(seed, id) are validation.

    The same ids always get the same folds; adding images moves at most the few at each class's boundary.
    """
    h = np.array([_unit_hash(seed, str(i)) for i in ids])
    folds = np.full(len(ids), "train", dtype=object)
    labels = np.asarray(labels)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        n_val = int(round(val_fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        folds[idx[np.argsort(h[idx], kind="stable")[:n_val]]] = "val"
    return folds


# ------------------------------------------------------------------ images
def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGB" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB") if im.mode != "RGB" else im


def load_image(path: str, size: int, mode: str = "stretch") -> np.ndarray:
    """Decode, orient (EXIF), convert to RGB and resize one image to (size, size, 3) uint8."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # decode at a reduced scale, never below the target size
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            if im.size != (size, size):
                # Shrinking (the usual case, after draft decoding): area averaging (BOX), the anti-aliased filter
                # that costs least (~0.3 ms against ~0.8 ms for bilinear on a 250x188 photo); enlarging: bilinear.
                method = Image.Resampling.BOX if min(im.size) >= size else Image.Resampling.BILINEAR
                if mode == "pad":
                    im = ImageOps.pad(im, (size, size), method=method, color=(0, 0, 0))
                elif mode == "crop":
                    im = ImageOps.fit(im, (size, size), method=method)
                else:
                    im = im.resize((size, size), method)
            return np.asarray(im, dtype=np.uint8)


def _load_job(args: tuple[str, int, str]) -> tuple[np.ndarray | None, str | None]:
    path, size, mode = args
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        return load_image(path, size, mode), None
    except Image.DecompressionBombError as e:
        return None, f"too large to decode safely ({e})"
    except Image.DecompressionBombWarning as e:
        return None, f"too large to decode safely ({e})"
    except UnidentifiedImageError:
        return None, "not a readable image (unidentified format)"
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"corrupt or truncated image ({e})"


_OUT_FDS: dict[str, int] = {}  # per process: the open output file each worker writes its rows into


def _write_job(args: tuple[str, int, str, str, int]) -> str | None:
    """Load one image and write its row straight into the output .npy at byte `pos` (pwrite): the pixels
    never travel back to the parent through a pipe. Returns the error, or None."""
    path, size, mode, out, pos = args
    img, err = _load_job((path, size, mode))
    if img is not None:
        fd = _OUT_FDS.get(out)
        if fd is None:
            fd = _OUT_FDS[out] = os.open(out, os.O_WRONLY)
        data = memoryview(np.ascontiguousarray(img, dtype=np.uint8)).cast("B")
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], pos + done)
    return err


def _pool(workers: int):
    # fork starts workers in ~0.1 s; spawn re-imports this module in every worker (~1-3 s, paid per pool).
    # Fork only a plain single-threaded process: train imports TensorFlow (threads) first and then may call
    # prepare, and forking a threaded process can deadlock, so that case (and non-Linux) keeps spawn.
    threaded = threading.active_count() > 1 or any(m in sys.modules for m in ("tensorflow", "jax", "torch"))
    method = "fork" if sys.platform.startswith("linux") and not threaded else "spawn"
    return mp.get_context(method).Pool(processes=workers)


def _reserve(path: Path) -> None:
    """Allocate the whole (sparse) file now: a full disk then fails here with ENOSPC (a clear error), not later
    with SIGBUS on a write into the memory map (a crash)."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.path.getsize(path))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        # EINVAL/EOPNOTSUPP: this filesystem cannot preallocate; carry on without
    finally:
        os.close(fd)


def resize_all(paths: list[str], size: int, mode: str, out: Path, pool, label: str) -> list[str | None]:
    """Resize every image into a uint8 .npy array (row i = paths[i]) with the worker pool (None: in this process);
    return each row's error or None.

    Each worker writes its rows straight into the file (pwrite; no pixels through pipes, no memory map whose
    written pages would stay resident), so memory stays flat whatever the number of images.
    """
    errors: list[str | None] = []
    with atomic_path(out, suffix=".npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        _reserve(tmp)
        offset, row_bytes = arr.offset, size * size * 3
        del arr
        t0 = time.perf_counter()
        jobs = [(p, size, mode, str(tmp), offset + i * row_bytes) for i, p in enumerate(paths)]
        if pool is None:
            results = map(_write_job, jobs)
        else:  # small chunks: cheap to send (paths), and the last one leaves a core idle only briefly
            results = pool.imap(_write_job, jobs, chunksize=max(1, min(16, len(jobs) // (pool._processes * 4))))
        try:
            for i, err in enumerate(results):
                errors.append(err)
                if (i + 1) % 20000 == 0:
                    print(f"prepare: {label} {i + 1}/{len(jobs)} images ({(i + 1) / (time.perf_counter() - t0):.0f} img/s)")
        finally:
            fd = _OUT_FDS.pop(str(tmp), None)  # the in-process writer's file
            if fd is not None:
                os.close(fd)
    return errors  # the workers' descriptors of the file close when the pool ends


def _train_rows(s: Scan, errors: list[str | None], raw: Path, out: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The readable training images (their row in train.npy as `index`; the others reported as skipped), and
    the rows the preview shows: up to 16 of each class."""
    train = s.train.copy()
    train["index"] = np.arange(len(train))
    bad = np.array([e is not None for e in errors], dtype=bool)
    for p, e in zip(train.loc[bad, "path"], np.array(errors, dtype=object)[bad]):
        s.skipped.append({"path": str(p), "reason": e})
    train = train.loc[~bad].reset_index(drop=True)
    if train.empty:
        raise UserError(f"{raw / 'train'}: none of the training images could be read; see {out / 'report.json'}")
    return train, np.sort(train.groupby("label").head(16)["index"].to_numpy())


def write_preview(npy: Path, rows: np.ndarray, path: Path) -> None:
    """A contact sheet of the given rows of a prepared array, 8 a row."""
    images = np.load(npy, mmap_mode="r")[rows]
    k = len(images)
    if k == 0:
        return
    cols = 8
    s = images.shape[1]
    sheet = Image.new("RGB", (cols * s, (k + cols - 1) // cols * s), (255, 255, 255))
    for j in range(k):
        sheet.paste(Image.fromarray(np.asarray(images[j])), ((j % cols) * s, (j // cols) * s))
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, "PNG", compress_level=1)  # fast zlib: the default level costs ~0.25 s on 1200x600


# ------------------------------------------------------------------ fingerprint
def _shown_path(p: Path) -> str:
    """A path as recorded in outputs: relative to the project root when inside it, so a clone elsewhere agrees."""
    try:
        return p.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(p)


def fingerprint(cfg: DictConfig, raw: Path) -> str:
    h = hashlib.sha256()
    h.update(f"v{PREPARE_VERSION}:{config_hash(cfg, SPLIT_KEYS)}".encode())
    for sub in ("train", "test"):
        with os.scandir(raw / sub) as it:
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
        h.update(repr((sub, entries)).encode())
    for extra in (cfg.dataset.labels_csv, cfg.dataset.sample_submission):
        p = raw / str(extra) if extra else None
        if p is not None and p.is_file():
            st = p.stat()
            h.update(repr((p.name, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


def is_up_to_date(cfg: DictConfig) -> bool:
    out = project_path(cfg.paths.processed) / cfg.dataset.name
    state = out / "state.json"
    raw = project_path(cfg.dataset.raw_dir)
    if not state.is_file() or not (raw / "train").is_dir() or not (raw / "test").is_dir():
        return False
    needed = ["train.npy", "test.npy", "train.csv", "test.csv", "classes.json"]
    if not all((out / f).is_file() for f in needed):
        return False
    return read_json(state).get("fingerprint") == fingerprint(cfg, raw)


# ------------------------------------------------------------------ stage
def prepare(cfg: DictConfig) -> Path:
    """Run the prepare stage; return the processed folder. Does nothing when inputs and config are unchanged."""
    out = project_path(cfg.paths.processed) / cfg.dataset.name
    raw = ensure_raw(cfg)
    fp = fingerprint(cfg, raw)
    state = out / "state.json"
    if is_up_to_date(cfg):
        print(f"prepare: {out} is up to date (inputs and config unchanged); nothing to do")
        return out
    t0 = time.perf_counter()
    s = scan(cfg, raw)
    workers = int(cfg.prepare.workers) or os.cpu_count() or 1
    size, mode = int(cfg.dataset.image_size), str(cfg.dataset.resize)
    out.mkdir(parents=True, exist_ok=True)
    state.unlink(missing_ok=True)  # outputs below are about to change: mark them stale until done

    pool = _pool(workers) if workers > 1 else None
    try:
        train_err = resize_all([str(p) for p in s.train["path"]], size, mode, out / "train.npy", pool, "train")
        train, preview = _train_rows(s, train_err, raw, out)
        if cfg.prepare.preview:  # drawn by a worker while the others resize the test images
            args = (out / "train.npy", preview, out / "preview.png")
            preview_job = pool.apply_async(write_preview, args) if pool is not None else write_preview(*args)
        test_err = resize_all([str(p) for p in s.test["path"]], size, mode, out / "test.npy", pool, "test")
        if cfg.prepare.preview and pool is not None:
            preview_job.get()
    finally:
        if pool is not None:
            pool.terminate()
    train["fold"] = assign_folds(train["id"], train["label"], float(cfg.dataset.val_fraction), int(cfg.dataset.split_seed))
    test = s.test.copy()
    test["index"] = np.arange(len(test))
    test["ok"] = [e is None for e in test_err]
    for p, e in zip(test["path"], test_err):
        if e is not None:
            s.warnings.append(f"test image {p} is unreadable ({e}); its row is kept and predicted with the class prior")
    for df in (train, test):
        df["path"] = [os.path.relpath(p, raw) for p in df["path"]]

    with atomic_path(out / "train.csv") as tmp:
        train[["id", "path", "label", "class", "fold", "index"]].to_csv(tmp, index=False)
    with atomic_path(out / "test.csv") as tmp:
        test[["id", "path", "index", "ok"]].to_csv(tmp, index=False)
    write_json(out / "classes.json", list(cfg.dataset.classes))
    counts = train.groupby(["fold", "class"]).size().unstack(fill_value=0)
    report = {
        "raw_dir": _shown_path(raw),
        "image_size": size,
        "resize": mode,
        "train_images": int((train["fold"] == "train").sum()),
        "val_images": int((train["fold"] == "val").sum()),
        "test_images": int(len(test)),
        "unreadable_test_images": int((~test["ok"]).sum()),
        "per_class": {f: {c: int(v) for c, v in row.items()} for f, row in counts.iterrows()},
        "skipped_count": len(s.skipped),
        "skipped": s.skipped,
        "warnings": s.warnings,
    }   # no timings, no absolute project paths: the same raw data gives byte-identical outputs, so DVC's hash of
    # this folder changes only when its content does (a re-prepare of unchanged data does not rerun training)
    write_json(out / "report.json", report)
    if cfg.prepare.write_images:
        _write_image_files(out, train, test)
    write_json(state, {"fingerprint": fp, "version": PREPARE_VERSION})
    dt = time.perf_counter() - t0
    n = len(s.train) + len(s.test)
    print(f"prepare: {report['train_images']} train + {report['val_images']} val + {report['test_images']} test images "
          f"-> {out} in {dt:.1f}s ({n / dt:.0f} img/s, {workers} workers)")
    if s.skipped:
        print(f"prepare: skipped {len(s.skipped)} file(s); each is listed with its reason in {out / 'report.json'}")
        for item in s.skipped[:10]:
            print(f"  skipped {item['path']}: {item['reason']}")
    for w in s.warnings:
        print(f"prepare: warning: {w}")
    return out


def _write_image_files(out: Path, train: pd.DataFrame, test: pd.DataFrame) -> None:
    for split, df in (("train", train), ("test", test)):
        arr = np.load(out / f"{split}.npy", mmap_mode="r")
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, idx in zip(df["id"], df["index"]):
            Image.fromarray(np.asarray(arr[idx])).save(folder / f"{i}.png")


def ensure_prepared(cfg: DictConfig) -> Path:
    """Used by later stages: prepare first when the processed data is missing or stale.

    Inside a DVC stage (DVC sets DVC_STAGE) DVC decides staleness by content: files it restores (dvc pull/checkout)
    have new mtimes, and re-preparing here would rewrite the prepare stage's outputs behind its back.
    """
    if os.environ.get("DVC_STAGE"):
        out = project_path(cfg.paths.processed) / cfg.dataset.name
        if not all((out / f).is_file() for f in ("train.npy", "test.npy", "train.csv", "test.csv", "classes.json")):
            raise UserError(f"{out} is missing or incomplete; run the prepare stage first: dvc repro prepare")
        return out
    if not is_up_to_date(cfg):
        print("prepare: processed data missing or out of date; running prepare first")
        return prepare(cfg)
    return project_path(cfg.paths.processed) / cfg.dataset.name


def main() -> None:
    import hydra

    from .common import cli, precheck_overrides

    precheck_overrides()

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    @cli
    def _run(cfg: DictConfig) -> None:
        prepare(cfg)

    _run()


if __name__ == "__main__":
    main()
