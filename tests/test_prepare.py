"""The prepare stage (src/prepare.py) as a whole: its outputs, its reruns, and a disk that fills up under it. Outputs:
train.npy/test.npy (uint8, the configured size), train.csv/test.csv (columns, numeric test id order, the row each
`index` names), classes.json, report.json, preview.png. Reruns: nothing is redone when raw files and config are
unchanged, everything when either changes, and redoing unchanged data gives byte-identical outputs (only the
machine-specific state.json differs, which .dvcignore keeps out of DVC's hash). A full disk is a one-line error
naming the file; earlier outputs stay whole, nothing half-written is left, and the outputs are marked stale.
Decoding and resizing: test_images.py; the raw layouts: test_rawdata.py; the split: test_split.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT, checked, dogs_cfg, path_overrides, run_cli
from imagegen import dogs_vs_cats, small_dogs_vs_cats
from src import prepare
from src.errors import UserError
from src.files import atomic_path, read_json, write_json, written_back
from src.images import load_image
from src.paths import Layout

SIZE = 48


def cfg_for(base: Path, *extra: str):
    return checked("prepare", "dataset=dogs_vs_cats", f"dataset.image_size={SIZE}", "prepare.workers=1",
                   *path_overrides(base), *extra)


def raw_of(base: Path) -> Path:
    return base / "raw" / "dogs_vs_cats"


def manifests(lay: Layout) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_csv(lay.train_manifest, dtype={"id": str}), pd.read_csv(lay.test_manifest)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    dogs_vs_cats(raw_of(tmp_path), n_per_class=10, n_test=12)
    return tmp_path


# ------------------------------------------------------------------ outputs
def test_outputs_sizes_counts_and_manifests(base: Path):
    lay = prepare.run(cfg_for(base))
    out = base / "processed" / "dogs_vs_cats"
    assert lay.processed == out and lay.train_images == out / "train.npy" and lay.test_manifest == out / "test.csv"
    x, xt = np.load(out / "train.npy"), np.load(out / "test.npy")
    assert x.dtype == np.uint8 and x.shape == (20, SIZE, SIZE, 3)
    assert xt.dtype == np.uint8 and xt.shape == (12, SIZE, SIZE, 3)

    train, test = manifests(lay)
    assert list(train.columns) == ["id", "path", "label", "class", "fold", "index"]
    assert list(test.columns) == ["id", "path", "index", "ok"]
    assert len(train) == 20 and train["id"].is_unique and sorted(train["index"]) == list(range(20))
    # the label index follows dataset.classes (cat=0, dog=1) and matches the file name
    for _, r in train.iterrows():
        assert r["class"] == Path(r["path"]).name.split(".")[0] == r["id"].split(".")[0]
        assert r["label"] == ["cat", "dog"].index(r["class"])
    assert (train["class"].value_counts() == 10).all()
    # stratified: round(0.2 * 10) = 2 validation images per class
    assert train[train["fold"] == "val"]["class"].value_counts().to_dict() == {"cat": 2, "dog": 2}
    assert set(train["fold"]) == {"train", "val"}
    # test ids in numeric order (10, 11, 12 after 9), each with its own file
    assert test["id"].tolist() == list(range(1, 13))
    assert [Path(p).name for p in test["path"]] == [f"{i}.jpg" for i in range(1, 13)]
    assert test["index"].tolist() == list(range(12)) and test["ok"].all()
    # the row named by `index` holds that file's resized pixels; paths are relative to the raw folder
    raw = raw_of(base)
    assert not any(Path(p).is_absolute() for p in [*train["path"], *test["path"]])
    for _, r in train.sample(4, random_state=0).iterrows():
        np.testing.assert_array_equal(x[r["index"]], load_image(str(raw / r["path"]), SIZE))
    r = test[test["id"] == 10].iloc[0]
    np.testing.assert_array_equal(xt[r["index"]], load_image(str(raw / "test" / "10.jpg"), SIZE))

    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]
    report = json.loads((out / "report.json").read_text())
    assert (report["train_images"], report["val_images"], report["test_images"]) == (16, 4, 12)
    assert report["skipped_count"] == 0 and report["image_size"] == SIZE
    assert report["raw_dir"] == str(raw)  # outside the project: shown as it is
    assert (out / "preview.png").is_file()
    assert prepare.is_current(cfg_for(base)) and prepare.is_complete(cfg_for(base))


def test_write_images_writes_each_row_as_a_png(base: Path):
    lay = prepare.run(cfg_for(base, "prepare.write_images=true", "prepare.preview=false"))
    train, test = manifests(lay)
    x = np.load(lay.train_images)
    assert sorted(p.stem for p in (lay.image_files / "train").iterdir()) == sorted(train["id"])
    assert len(list((lay.image_files / "test").iterdir())) == 12
    r = train.iloc[3]
    np.testing.assert_array_equal(np.asarray(Image.open(lay.image_files / "train" / f"{r['id']}.png")), x[r["index"]])
    assert not lay.preview.exists()


# ------------------------------------------------------------------ incremental reruns
def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}


def test_second_run_does_no_work(base: Path, capsys):
    out = prepare.run(cfg_for(base)).processed
    before = _mtimes(out)
    capsys.readouterr()
    prepare.run(cfg_for(base))
    assert "up to date" in capsys.readouterr().out
    assert _mtimes(out) == before


@pytest.mark.parametrize("change, check", [
    ("dataset.val_fraction=0.5", lambda lay: manifests(lay)[0].query("fold == 'val'")["class"].value_counts().to_dict()
     == {"cat": 5, "dog": 5}),
    ("dataset.image_size=32", lambda lay: np.load(lay.train_images, mmap_mode="r").shape == (20, 32, 32, 3)),
])
def test_config_change_redoes_the_work(base: Path, capsys, change, check):
    prepare.run(cfg_for(base))
    assert not prepare.is_current(cfg_for(base, change))
    capsys.readouterr()
    lay = prepare.run(cfg_for(base, change))
    assert "up to date" not in capsys.readouterr().out
    assert check(lay)
    capsys.readouterr()
    prepare.run(cfg_for(base, change))
    assert "up to date" in capsys.readouterr().out


def test_changed_raw_file_redoes_the_work(base: Path, capsys):
    lay = prepare.run(cfg_for(base))
    Image.new("RGB", (50, 50), (0, 255, 0)).save(raw_of(base) / "test" / "3.jpg")
    assert not prepare.is_current(cfg_for(base))
    capsys.readouterr()
    prepare.run(cfg_for(base))
    assert "up to date" not in capsys.readouterr().out
    green = np.load(lay.test_images)[2]
    assert green[..., 1].min() > 200 and green[..., 0].max() < 50


def test_redoing_unchanged_data_gives_byte_identical_outputs(base: Path, capsys):
    """Only state.json (the mtime fingerprint, kept out of DVC's hash by .dvcignore) may differ after a re-prepare of
    the same files, e.g. after `dvc pull` or a clone: otherwise DVC would rerun training for nothing."""
    out = prepare.run(cfg_for(base, "prepare.workers=2")).processed
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for f in raw_of(base).rglob("*"):
        if f.is_file():
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    prepare.run(cfg_for(base, "prepare.workers=2"))
    assert "up to date" not in capsys.readouterr().out   # it really redid the work
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert before.keys() == after.keys() and "preview.png" in after
    assert [n for n in after if after[n] != before[n]] == ["state.json"]
    assert "/data/processed/*/state.json" in (ROOT / ".dvcignore").read_text().split("\n")


def test_the_data_fingerprint_names_the_pixels_not_where_the_raw_folder_lies(base: Path):
    """Predictions are remade when the prepared data they came from changes (src/inference.py). The same raw files
    prepared from another path (a second checkout; raw_dir and skipped paths in the report differ) are the same
    data; another image size or another prepare version is not."""
    from src import manifests

    lay = prepare.run(cfg_for(base))
    first, report = manifests.load(lay).fingerprint(), read_json(lay.report)
    assert report["prepare_version"] == prepare.PREPARE_VERSION
    elsewhere = base / "elsewhere" / "dogs_vs_cats"
    shutil.copytree(raw_of(base), elsewhere)  # copy2: the same sizes and mtimes
    lay.prepare_state.unlink()  # prepared again, as in a second checkout
    prepare.run(cfg_for(base, f"dataset.raw_dir={elsewhere}"))
    assert read_json(lay.report)["raw_dir"] == str(elsewhere) != report["raw_dir"]
    assert manifests.load(lay).fingerprint() == first
    write_json(lay.report, {**report, "prepare_version": prepare.PREPARE_VERSION - 1})
    assert manifests.load(lay).fingerprint() != first
    smaller = prepare.run(cfg_for(base, "dataset.image_size=32"))
    assert manifests.load(smaller).fingerprint() != first


def test_the_command_with_a_worker_pool_prints_no_worker_tracebacks(tmp_path: Path):
    """The pool's workers end with SIGTERM when prepare is done; they must not run the command's own signal
    handlers (src/interrupts.py), which would print a KeyboardInterrupt traceback from every worker."""
    for attempt in range(3):  # the default demo (700 images): without the fix 2 runs in 3 printed one
        base = tmp_path / str(attempt)
        r = run_cli("src.prepare", "dataset=demo", "dataset.image_size=48", *path_overrides(base),
                    "prepare.workers=2", timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr + r.stdout, r.stderr[-2000:]
        assert (base / "processed" / "demo" / "train.npy").is_file()


PROBE_MAIN = """
import os, sys, threading, time
if __name__ != "__main__":  # a pool worker importing the command's main module, as spawn does
    open(os.path.join(os.environ["PROBE"], str(os.getpid())), "w").close()
else:  # a threaded process, as one that has loaded TensorFlow: prepare's pool is spawned, not forked
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    from src import images
    paths = sys.argv[1:]
    pool = images.worker_pool(2)
    print(pool._ctx.get_start_method())
    out = os.path.join(os.environ["PROBE"], "x.npy")
    errors = images.resize_all(paths, 16, "stretch", __import__("pathlib").Path(out), pool, 2, "probe")
    pool.terminate()
    print(errors == [None] * len(paths))
"""


def test_spawned_workers_do_not_import_the_commands_main_module(tmp_path: Path):
    """Under `python -m src.train` (TensorFlow loaded, so the pool spawns) each worker used to import the training
    module, TensorFlow and all, before its first image: prepare took ~6x longer there than on its own."""
    raw = dogs_vs_cats(tmp_path / "raw", n_per_class=3, n_test=1)
    (tmp_path / "probe_main.py").write_text(PROBE_MAIN)
    probe = tmp_path / "probe"
    probe.mkdir()
    env = {**os.environ, "PROBE": str(probe), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    r = subprocess.run([sys.executable, "-m", "probe_main", *map(str, sorted((raw / "train").iterdir()))], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["spawn", "True"]
    assert sorted(p.name for p in probe.iterdir()) == ["x.npy"]  # no worker ran the main module
    assert np.load(probe / "x.npy").shape == (6, 16, 16, 3)


# ------------------------------------------------------------------ full disk
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
    # ... or a library that writes for us re-raises it without its errno (Keras' model.save, h5py)
    with pytest.raises(UserError, match="no space left"):
        with atomic_path(target) as tmp:
            raise OSError(f"Unable to write file ({os.strerror(errno.ENOSPC)})")
    assert read_json(target) == {"old": True}
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]     # no temporaries left behind
    # other errors pass through unchanged, and still leave no temporary
    with pytest.raises(PermissionError):
        with atomic_path(target) as tmp:
            raise PermissionError(errno.EACCES, "denied")
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~umask)              # outputs get the usual permissions


def test_written_back_flushes_while_the_file_is_still_being_written(tmp_path: Path, monkeypatch):
    """What a writer has put in the file goes to disk during the work, not all in the fsync at the end."""
    import time

    target, seen = tmp_path / "rows.bin", []
    target.write_bytes(b"")
    real = getattr(os, "fdatasync", os.fsync)
    monkeypatch.setattr(os, "fdatasync" if hasattr(os, "fdatasync") else "fsync",
                        lambda fd: (seen.append(os.fstat(fd).st_size), real(fd))[1])
    with written_back(target, every=0.01), open(target, "ab") as out:
        for k in range(1, 6):
            out.write(b"x" * 4096)
            out.flush()
            deadline = time.monotonic() + 10
            while max(seen, default=0) < k * 4096 and time.monotonic() < deadline:  # until a flush has seen it
                time.sleep(0.005)
    assert {4096, 8192, 12288, 16384}.issubset(seen) and seen == sorted(seen)  # flushed part by part, as it grew


def test_a_failed_write_back_is_raised_not_lost(tmp_path: Path, monkeypatch):
    """The kernel reports a write-back error once: the flusher's failure reaches the caller, and atomic_path leaves
    no output (the fsync before its rename might never hear of it)."""
    import time

    def eio(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fdatasync" if hasattr(os, "fdatasync") else "fsync", eio)
    target = tmp_path / "train.npy"
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp, written_back(tmp, every=0.01):
            tmp.write_bytes(b"rows")
            time.sleep(0.05)
    assert e.value.errno == errno.EIO
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_prepare_disk_full_while_writing_manifests(tmp_path: Path, monkeypatch):
    raw = small_dogs_vs_cats(tmp_path / "raw")
    out = prepare.run(dogs_cfg(tmp_path, raw)).processed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "test.csv":
            _enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    cfg = dogs_cfg(tmp_path, raw, "dataset.val_fraction=0.5")           # a new split: prepare runs again
    with pytest.raises(UserError) as e:
        prepare.run(cfg)
    monkeypatch.undo()
    assert str(out / "test.csv") in str(e.value) and "no space left" in str(e.value)
    assert (out / "test.csv").read_bytes() == before["test.csv"]          # the earlier file, whole
    assert not prepare.is_current(cfg) and not (out / "state.json").exists()   # the half-updated set is marked stale
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    prepare.run(cfg)                                                      # with space again, it completes
    assert prepare.is_current(cfg)


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
    raw = small_dogs_vs_cats(tmp_path / "raw")
    base = [f"paths.processed={small_disk}/processed"]
    out = prepare.run(dogs_cfg(tmp_path, raw, *base)).processed
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "state.json"}
    with pytest.raises(UserError) as e:
        prepare.run(dogs_cfg(tmp_path, raw, *base, "dataset.image_size=256"))  # 8 x 196 KB no longer fits in 1 MiB
    assert "train.npy" in str(e.value) and "no space left" in str(e.value)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before                                                # earlier outputs intact, no temporaries
