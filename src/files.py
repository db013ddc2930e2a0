"""Writing outputs atomically (a kill never leaves a half-written file), JSON, and content hashes."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    A kill or an error leaves `target` as it was (old content or absent). The temporary is dot-named
    (.<name>.<random><suffix>), so no stage ever reads it and .dvcignore keeps it out of DVC's hashes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                               suffix=suffix or "".join(target.suffixes[-2:]) or ".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        # libraries that write for us (Keras' model.save, h5py) may re-raise ENOSPC without its errno
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or os.strerror(errno.ENOSPC) in str(e):
            raise UserError(f"{target}: no space left on device while writing it; free some disk space and run again "
                            "(earlier outputs are intact)") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def written_back(path: str | os.PathLike, every: float = 0.25) -> Iterator[None]:
    """While other processes write `path`, flush what they have written so far every `every` seconds (fdatasync in
    a thread: it waits on the disk, not on a core), so the disk writes overlap the work and the fsync before the
    rename (atomic_path) has only the last part left. For prepare's arrays: that fsync alone was ~0.27 s of wall
    clock after the work for 2,003 photos (135 MB); the overlap saves about half of it (benchmarks/README.md).

    A failed flush is raised here: the kernel reports a write-back error once, so the later fsync could miss it."""
    stop, failed = threading.Event(), []
    fd = os.open(path, os.O_WRONLY)
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync

    def flush() -> None:
        try:
            while not stop.wait(every):
                sync(fd)
        except OSError as e:
            failed.append(e)

    flusher = threading.Thread(target=flush, name=f"write-back {Path(path).name}", daemon=True)
    flusher.start()
    try:
        yield
    finally:
        stop.set()
        flusher.join()
        os.close(fd)
    if failed:
        raise failed[0]


def locked(folder: Path, busy: str) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on a folder (made if missing) while the block runs; held elsewhere: UserError(busy). The
    operating system drops it when the process ends, however it ends, so a killed run can be rerun at once."""
    folder.mkdir(parents=True, exist_ok=True)
    return _flock(os.open(folder, os.O_RDONLY), busy)


def waiting_lock(path: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on `path` (created if missing), waiting for whoever holds it: processes that would
    make the same outputs at once (the jobs of a parallel sweep preparing one dataset) take turns. The operating
    system drops the lock when its process ends, however it ends."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _flock(os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK), None)


@contextlib.contextmanager
def _flock(fd: int, busy: str | None) -> Iterator[None]:
    """flock(fd) for the block, then close it; busy: fail at once with UserError(busy), None: wait."""
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise UserError(busy) from None
        yield
    finally:
        os.close(fd)


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def short_hash(obj: Any) -> str:
    """A stable 16-hex-digit hash of a JSON-able object (used to tell whether an output is still up to date)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
