"""Stage 1, prepare: the raw Kaggle layout -> resized uint8 image arrays + manifests with a stable split.

    python -m src.prepare dataset=dogs_vs_cats          # reads data/raw/dogs_vs_cats
    python -m src.prepare dataset=cifar10 prepare.workers=8

Writes data/processed/<dataset>/ (src/paths.py, Layout):
  train.npy, test.npy   resized images, uint8 (N, size, size, 3), decoded once (memory-mapped by later stages)
  train.csv             id, path, label, class, fold (train|val, src/split.py), index (row in train.npy)
  test.csv              id, path, index, ok (False: unreadable, predicted with the class prior)
  classes.json          class names in label order, reused by every later stage
  report.json           counts, every skipped or converted file and why
  preview.png           a contact sheet of resized training images (prepare.preview)
  state.json            fingerprint of the inputs (names, sizes, mtimes) and config: a rerun with the same
                        fingerprint does nothing. Machine-specific, so .dvcignore keeps it out of DVC's hash
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from . import images, rawdata
from .errors import UserError
from .files import atomic_path, read_json, short_hash, waiting_lock, write_json
from .paths import Layout, shown_path
from .split import assign_folds

PREPARE_VERSION = 5  # bump when the output format or resizing changes: forces a rerun
SPLIT_KEYS = ["dataset.name", "dataset.layout", "dataset.labels_csv", "dataset.image_ext", "dataset.classes",
              "dataset.image_size", "dataset.resize", "dataset.val_fraction", "dataset.split_seed",
              "dataset.sample_submission"]
OUTPUTS = ("train_images", "test_images", "train_manifest", "test_manifest", "classes")  # what later stages read


def run(cfg: DictConfig) -> Layout:
    """Prepare the dataset; do nothing when its inputs and config are unchanged. Processes that prepare the same
    dataset at once (parallel sweep jobs) take turns: the later ones find it up to date."""
    lay = Layout(cfg)
    with waiting_lock(lay.prepare_lock):
        rawdata.ensure_raw(cfg, lay)
        if is_current(cfg):
            print(f"prepare: {lay.processed} is up to date (inputs and config unchanged); nothing to do")
            return lay
        return _prepare(cfg, lay)


def _prepare(cfg: DictConfig, lay: Layout) -> Layout:
    t0 = time.perf_counter()
    s = rawdata.scan(cfg, lay)
    lay.processed.mkdir(parents=True, exist_ok=True)
    lay.prepare_state.unlink(missing_ok=True)  # the outputs below are about to change: stale until done
    train, test = _resize_images(cfg, lay, s)
    train["fold"] = assign_folds(train["id"], train["label"], float(cfg.dataset.val_fraction),
                                 int(cfg.dataset.split_seed))
    report = _write_manifests(cfg, lay, s, train, test)
    if cfg.prepare.write_images:
        images.write_image_files(lay.train_images, train["index"], list(train["id"]), lay.image_files / "train")
        images.write_image_files(lay.test_images, test["index"], list(test["id"]), lay.image_files / "test")
    write_json(lay.prepare_state, {"fingerprint": fingerprint(cfg, lay), "version": PREPARE_VERSION})
    _print_summary(cfg, lay, s, report, time.perf_counter() - t0)
    return lay


def is_current(cfg: DictConfig) -> bool:
    """The processed folder is complete and was made from these raw files with this config."""
    lay = Layout(cfg)
    if not (lay.prepare_state.is_file() and lay.raw_train.is_dir() and lay.raw_test.is_dir()):
        return False
    if not all(getattr(lay, f).is_file() for f in OUTPUTS):
        return False
    return read_json(lay.prepare_state).get("fingerprint") == fingerprint(cfg, lay)


def is_complete(cfg: DictConfig) -> bool:
    """Every output later stages read is there (inside DVC, which decides staleness by content itself)."""
    lay = Layout(cfg)
    return all(getattr(lay, f).is_file() for f in OUTPUTS)


def fingerprint(cfg: DictConfig, lay: Layout) -> str:
    """What the outputs are made from: the raw files' names, sizes and mtimes, and the split and image keys."""
    h = hashlib.sha256(f"v{PREPARE_VERSION}:{short_hash({k: _value(cfg, k) for k in SPLIT_KEYS})}".encode())
    for folder in (lay.raw_train, lay.raw_test):
        with os.scandir(folder) as it:
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.is_file())
        h.update(repr((folder.name, entries)).encode())
    for extra in (lay.labels_csv, lay.sample_submission):
        if extra is not None and extra.is_file():
            st = extra.stat()
            h.update(repr((extra.name, st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


def _value(cfg: DictConfig, key: str):
    v = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v


def _resize_images(cfg: DictConfig, lay: Layout, s: rawdata.Scan) -> tuple[pd.DataFrame, pd.DataFrame]:
    """train.npy and test.npy from one worker pool (the preview is drawn by a worker meanwhile); the readable
    training rows (their row in train.npy as `index`) and every test row (`ok`: readable)."""
    workers = int(cfg.prepare.workers) or os.cpu_count() or 1
    size, mode = int(cfg.dataset.image_size), str(cfg.dataset.resize)
    pool = images.worker_pool(workers)
    try:
        errors = images.resize_all([str(p) for p in s.train["path"]], size, mode, lay.train_images, pool, workers, "train")
        train = _readable(s, errors, lay)
        preview = None
        if cfg.prepare.preview:
            rows = np.sort(train.groupby("label").head(16)["index"].to_numpy())  # up to 16 of each class
            args = (lay.train_images, rows, lay.preview)
            preview = pool.apply_async(images.contact_sheet, args) if pool is not None else images.contact_sheet(*args)
        test_errors = images.resize_all([str(p) for p in s.test["path"]], size, mode, lay.test_images, pool, workers, "test")
        if pool is not None and preview is not None:
            preview.get()
    finally:
        if pool is not None:
            pool.terminate()
    test = s.test.assign(index=np.arange(len(s.test)), ok=[e is None for e in test_errors])
    for p, e in zip(test["path"], test_errors):
        if e is not None:
            s.warnings.append(f"test image {p} is unreadable ({e}); its row is kept and predicted with the class prior")
    return train, test


def _readable(s: rawdata.Scan, errors: list[str | None], lay: Layout) -> pd.DataFrame:
    """The training images that could be read; the others are reported as skipped (their rows stay unused)."""
    train = s.train.assign(index=np.arange(len(s.train)))
    bad = np.array([e is not None for e in errors], dtype=bool)
    for p, e in zip(train.loc[bad, "path"], np.array(errors, dtype=object)[bad]):
        s.skipped.append({"path": str(p), "reason": e})
    train = train.loc[~bad].reset_index(drop=True)
    if train.empty:
        raise UserError(f"{lay.raw_train}: none of the training images could be read; see {lay.report}")
    return train


def _write_manifests(cfg: DictConfig, lay: Layout, s: rawdata.Scan, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """train.csv, test.csv, classes.json and report.json. No timings and no absolute project paths inside: the same
    raw data gives byte-identical outputs, so DVC's hash of the folder changes only when its content does (a
    re-prepare of unchanged data does not rerun training)."""
    for df in (train, test):
        df["path"] = [p.relative_to(lay.raw).as_posix() for p in df["path"]]  # train/cat.1.jpg: raw_train is raw/train
    with atomic_path(lay.train_manifest) as tmp:
        train[["id", "path", "label", "class", "fold", "index"]].to_csv(tmp, index=False)
    with atomic_path(lay.test_manifest) as tmp:
        test[["id", "path", "index", "ok"]].to_csv(tmp, index=False)
    write_json(lay.classes, list(cfg.dataset.classes))
    counts = train.groupby(["fold", "class"]).size().unstack(fill_value=0)
    report = {
        "raw_dir": shown_path(lay.raw), "prepare_version": PREPARE_VERSION,
        "image_size": int(cfg.dataset.image_size), "resize": str(cfg.dataset.resize),
        "train_images": int((train["fold"] == "train").sum()), "val_images": int((train["fold"] == "val").sum()),
        "test_images": int(len(test)), "unreadable_test_images": int((~test["ok"]).sum()),
        "per_class": {f: {c: int(v) for c, v in row.items()} for f, row in counts.iterrows()},
        "skipped_count": len(s.skipped), "skipped": s.skipped, "warnings": s.warnings,
    }
    write_json(lay.report, report)
    return report


def _print_summary(cfg: DictConfig, lay: Layout, s: rawdata.Scan, report: dict, seconds: float) -> None:
    n = len(s.train) + len(s.test)
    print(f"prepare: {report['train_images']} train + {report['val_images']} val + {report['test_images']} test images "
          f"-> {lay.processed} in {seconds:.1f}s ({n / seconds:.0f} img/s, "
          f"{int(cfg.prepare.workers) or os.cpu_count()} workers)")
    if s.skipped:
        print(f"prepare: skipped {len(s.skipped)} file(s); each is listed with its reason in {lay.report}")
        for item in s.skipped[:10]:
            print(f"  skipped {item['path']}: {item['reason']}")
    for w in s.warnings:
        print(f"prepare: warning: {w}")


if __name__ == "__main__":
    from .cli import main

    main("prepare")
