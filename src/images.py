"""Decoding and resizing images, once, in parallel, straight into a uint8 .npy array.

Every image becomes (size, size, 3) uint8 RGB: EXIF orientation applied; grayscale, CMYK, palette, 16-bit and
transparent images converted (transparency over white); JPEGs decoded with DCT-domain downscaling (to the smallest
of 1/1, 1/2, 1/4, 1/8 that stays at or above the target size), which is also what keeps an 8000x6000 photo's
memory small. A file that cannot be decoded gives its reason instead of pixels.

The usual case, a colour JPEG stretched to the square (dataset.resize=stretch), takes the fast path: OpenCV's
reduced-size decode (IMREAD_REDUCED_COLOR_*, libjpeg-turbo, EXIF orientation applied where the file has EXIF) and
its resize, ~2x Pillow's draft decode + BOX resize per CPU-second here (benchmarks/README.md); the file's own
segment headers tell a colour JPEG and its size (jpeg_header), so Pillow never opens it. After the DCT-domain reduction
each axis usually shrinks by less than 2, where bilinear already reads every source pixel, so it is bilinear;
area averaging where an axis still shrinks by 2 or more. Everything else (PNGs, grayscale and CMYK JPEGs, pad and
crop, files that do not end in the JPEG end marker, which Pillow then accepts or rejects as truncated) goes
through Pillow as before. Both paths are deterministic: the same file gives the same bytes on every run.
"""
from __future__ import annotations

import contextlib
import errno
import multiprocessing as mp
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import progress
from .files import atomic_path, written_back

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = 200_000_000  # 8000x6000 photos are fine; decompression bombs beyond this are skipped
cv2.setNumThreads(1)  # one image per worker process: the pool is the parallelism
# imdecode's flags by DCT scale: the reduced colour reads, decoded straight to RGB (libjpeg-turbo writes RGB itself:
# no BGR pass and no conversion after it)
REDUCED_READ = {k: (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB for k, flag in (
    (1, cv2.IMREAD_COLOR), (2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4),
    (8, cv2.IMREAD_REDUCED_COLOR_8))}


# ------------------------------------------------------------------ one image
def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit and float images: scaled to 0..255, not clipped
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "RGB" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return im.convert("RGB") if im.mode != "RGB" else im


def dct_scale(width: int, height: int, size: int) -> int:
    """The largest JPEG DCT-domain reduction (1, 2, 4 or 8) that keeps both sides at or above `size`."""
    return next((k for k in (8, 4, 2) if min(width, height) >= k * size), 1)


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic): the frame header
# holds the height, width and number of colour components. 0xC4, 0xC8 and 0xCC are other segments.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header(data: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, colour components, has EXIF) read from a JPEG's segments before its frame, or None when the
    bytes do not start like a JPEG or end before a frame header. A few segment headers: ~2 us against ~25 us for
    Image.open, which parses the same bytes into a Python object first."""
    if data[:3] != b"\xff\xd8\xff":
        return None
    i, exif = 2, False
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return width, height, data[i + 9], exif
        exif = exif or (marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00")
        i += 2 + length
    return None


def reduced_read_flag(width: int, height: int, exif: bool, size: int) -> int:
    """imdecode's flag for a colour JPEG: its DCT scale, and EXIF orientation only where the file has EXIF
    (OpenCV's orientation step costs ~15% of the decode, ~0.08 ms a photo here, even with nothing to turn)."""
    flag = REDUCED_READ[dct_scale(width, height, size)]
    return flag if exif else flag | cv2.IMREAD_IGNORE_ORIENTATION


def _fast_jpeg(path: str, size: int) -> np.ndarray | None:
    """A colour JPEG decoded by OpenCV at its DCT scale, oriented and resized to (size, size, 3) RGB; None when the
    file is for Pillow: not a colour JPEG, too large (Pillow reports the decompression bomb), or not ending in the
    end-of-image marker (Pillow decides whether it is truncated)."""
    with open(path, "rb") as f:
        if f.read(3) != b"\xff\xd8\xff":
            return None
        data = b"\xff\xd8\xff" + f.read()
    header = jpeg_header(data)
    if header is None or header[2] != 3 or data[-2:] != b"\xff\xd9":
        return None
    width, height, _, exif = header
    if width * height > Image.MAX_IMAGE_PIXELS:
        return None
    # EXIF orientation is applied by imdecode; it swaps no sides of the scale test
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), reduced_read_flag(width, height, exif, size))
    if rgb is None:
        return None
    h, w = rgb.shape[:2]
    if (w, h) != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR if max(w, h) < 2 * size else cv2.INTER_AREA)
    return rgb


def load_image(path: str, size: int, mode: str = "stretch") -> np.ndarray:
    """Decode, orient (EXIF), convert to RGB and resize one image to (size, size, 3) uint8.

    mode: stretch (ignore the aspect ratio), pad (keep it, black bars) or crop (keep it, centre crop)."""
    fast = _fast_jpeg(path, size) if mode == "stretch" else None
    if fast is not None:
        return fast
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size, size))  # decode at a reduced scale, never below the target size
            im = _to_rgb(ImageOps.exif_transpose(im))
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


def try_load(path: str, size: int, mode: str) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None), or (None, why the file cannot be used)."""
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        return load_image(path, size, mode), None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return None, f"too large to decode safely ({e})"
    except UnidentifiedImageError:
        return None, "not a readable image (unidentified format)"
    except (OSError, ValueError, SyntaxError) as e:
        return None, f"corrupt or truncated image ({e})"


# ------------------------------------------------------------------ many images, in parallel, into one array
_OUT_FDS: dict[str, int] = {}  # per process: the open output file each worker writes its rows into


def _write_rows(args: tuple[list[str], int, str, str, int]) -> list[str | None]:
    """Load a run of consecutive images and write each one's row straight into the output .npy, the first at byte
    `pos` (pwrite): the pixels never travel back to the parent through a pipe. Returns each image's error, or None.
    A job is a run of images, not one: the parent then handles one result a run (a result per image cost it
    ~25-30 us of CPU an image in the pool's threads: 0.11-0.14 s against 0.06-0.09 s for the 2,003 shared photos)."""
    paths, size, mode, out, pos = args
    fd = _OUT_FDS.get(out)
    if fd is None:
        fd = _OUT_FDS[out] = os.open(out, os.O_WRONLY)
    errors = []
    for k, path in enumerate(paths):
        img, err = try_load(path, size, mode)
        errors.append(err)
        if img is not None:
            data = memoryview(np.ascontiguousarray(img, dtype=np.uint8)).cast("B")
            start, done = pos + k * len(data), 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], start + done)
    return errors


def worker_pool(workers: int):
    """A pool of `workers` processes, or None for one (the work then runs in this process).

    fork starts workers in ~0.1 s; spawn re-imports the project in every worker (~1-3 s, paid per pool). Only a
    plain single-threaded process is forked: one that has TensorFlow (threads) loaded may deadlock in a fork, so
    that case (and non-Linux) spawns."""
    if workers <= 1:
        return None
    threaded = threading.active_count() > 1 or any(m in sys.modules for m in ("tensorflow", "jax", "torch"))
    method = "fork" if sys.platform.startswith("linux") and not threaded else "spawn"
    if mp.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
        # A job of a joblib sweep runs in a loky worker, whose global start method is "loky": spawned workers are
        # told to use it, cannot (plain multiprocessing does not know it), die, and the pool respawns them forever.
        mp.set_start_method(method, force=True)
    with _main_module_hidden(method == "spawn"):
        return mp.get_context(method).Pool(processes=workers, initializer=_worker_signals)


@contextlib.contextmanager
def _main_module_hidden(hide: bool):
    """A spawned worker first imports the parent's __main__ (for functions defined there): under `python -m
    src.train`, that is the training module, TensorFlow and all, in every worker (prepare took ~6x longer inside
    train than on its own). The pool's functions live here, so its workers are started without it, as from an
    interactive session; a worker the pool replaces later does import it, and works the same, only slower."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if main is not None and k in main.__dict__}
    if hide and saved:
        main.__spec__ = None
        main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if hide and saved:
            main.__dict__.update(saved)


def _worker_signals() -> None:
    """In a pool worker: die quietly when the pool ends it (SIGTERM, Pool.terminate) and leave Ctrl-C to the
    parent, which stops the pool; the parent's handlers (src/interrupts.py), inherited through fork, would print
    a traceback from every idle worker."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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


def resize_all(paths: list[str], size: int, mode: str, out: Path, pool, workers: int, label: str) -> list[str | None]:
    """Resize every image into a uint8 .npy array (row i = paths[i]) with the pool (None: in this process);
    return each row's error or None.

    Workers write their rows straight into the file (pwrite; no pixels through pipes, no memory map whose written
    pages would stay resident), so memory stays flat whatever the number of images; what they have written goes
    to disk while they work (files.written_back)."""
    errors: list[str | None] = []
    with atomic_path(out, suffix=".npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        _reserve(tmp)
        offset, row_bytes = arr.offset, size * size * 3
        del arr
        # runs of up to 32 images: cheap to send (paths), few results for the parent, and the last run leaves a
        # core idle only briefly
        run = max(1, min(32, len(paths) // (workers * 4)))
        jobs = [(paths[i:i + run], size, mode, str(tmp), offset + i * row_bytes) for i in range(0, len(paths), run)]
        results = map(_write_rows, jobs) if pool is None else pool.imap(_write_rows, jobs)
        try:
            with progress.bar(f"prepare: {label}", total=len(paths), unit="img") as shown, written_back(tmp):
                for run_errors in results:
                    errors.extend(run_errors)
                    shown.update(len(run_errors))
        finally:
            fd = _OUT_FDS.pop(str(tmp), None)  # the in-process writer's file
            if fd is not None:
                os.close(fd)
    return errors  # the workers' descriptors of the file close when the pool ends


def contact_sheet(npy: Path, rows: np.ndarray, path: Path) -> None:
    """A PNG of the given rows of a prepared array, 8 a row."""
    images = np.load(npy, mmap_mode="r")[rows]
    if len(images) == 0:
        return
    cols, s = 8, images.shape[1]
    sheet = Image.new("RGB", (cols * s, (len(images) + cols - 1) // cols * s), (255, 255, 255))
    for j, img in enumerate(images):
        sheet.paste(Image.fromarray(np.asarray(img)), ((j % cols) * s, (j // cols) * s))
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, "PNG", compress_level=1)  # fast zlib: the default level costs ~0.25 s on 1200x600


def write_image_files(npy: Path, rows: np.ndarray, names: list, folder: Path) -> None:
    """Each given row of a prepared array as <folder>/<name>.png, to look at."""
    arr = np.load(npy, mmap_mode="r")
    folder.mkdir(parents=True, exist_ok=True)
    for name, row in zip(names, rows):
        Image.fromarray(np.asarray(arr[row])).save(folder / f"{name}.png")
