"""Several processes as one training job (JAX): the KERAS_DISTRIBUTION_* contract, which process does the writing,
and what happens when one of them fails or dies.

Every process runs the same command with its own KERAS_DISTRIBUTION_PROCESS_ID (0..N-1), the same
KERAS_DISTRIBUTION_NUM_PROCESSES=N and KERAS_DISTRIBUTION_JOB_ADDRESSES (process 0's host:port, where the
coordinator listens; or every process's host:port, comma-separated, the first being process 0's). They join
through jax.distributed.initialize (what keras.distribution.initialize calls, here with timeouts it does not pass).
Process 0, the chief, is the only one that writes: the MLflow run, checkpoints, the model, its predictions; the
others train and read the same checkpoint when resuming, so the model folder must be one that every host sees.

A process that fails leaves a line in <member folder>/.processes/<job>/ (its error) and every other process,
blocked in a collective it can no longer finish, reads it from a watchdog thread and stops with one line naming
it; a process that dies without a word (SIGKILL, a host gone) stops refreshing its heartbeat file there, and the
others stop after train.peer_timeout seconds. The same timeout bounds the wait for every process to join.
TensorFlow's multi-worker strategy (TF_CONFIG) is refused: Keras 3's fit does not work with
tf.distribute.MultiWorkerMirroredStrategy (keras-team/keras#20585).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

from .errors import UserError

ENV = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID")
HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class Job:
    coordinator: str  # host:port of process 0
    count: int
    index: int


def job_from_env() -> Job | None:
    """The multi-process job this process belongs to, from KERAS_DISTRIBUTION_*, checked; None when none is set."""
    given = {k: os.environ[k].strip() for k in ENV if os.environ.get(k, "").strip()}
    if not given:
        return None
    missing = [k for k in ENV if k not in given]
    if missing:
        raise UserError(f"{', '.join(missing)} not set, but {', '.join(given)} is: a multi-process job needs all of "
                        f"{', '.join(ENV)} on every process")
    count, index = _integer(ENV[1], given[ENV[1]], 1), _integer(ENV[2], given[ENV[2]], 0)
    if index >= count:
        raise UserError(f"{ENV[2]}={index} is not below {ENV[1]}={count}; number the processes 0..{count - 1}")
    addresses = [a.strip() for a in given[ENV[0]].split(",")]
    if len(addresses) > 1 and len(addresses) != count:
        raise UserError(f"{ENV[0]} lists {len(addresses)} addresses but {ENV[1]}={count}; give one host:port per "
                        "process, or only process 0's")
    host, _, port = addresses[0].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{ENV[0]}={given[ENV[0]]!r}: expected host:port of process 0 (e.g. 10.0.0.1:29500)")
    return Job(addresses[0], count, index)


def _integer(key: str, value: str, low: int) -> int:
    if not value.isdigit() or int(value) < low:
        raise UserError(f"{key}={value!r} is not an integer >= {low}")
    return int(value)


def refuse_tensorflow_multiworker() -> None:
    """Multi-worker training on the TensorFlow backend: one line saying why not, and what to use."""
    if os.environ.get("TF_CONFIG") or job_from_env():
        raise UserError("multi-process training on the TensorFlow backend (TF_CONFIG or KERAS_DISTRIBUTION_*) is not "
                        "supported: Keras 3's fit does not work with tf.distribute.MultiWorkerMirroredStrategy "
                        "(keras-team/keras#20585); run with KERAS_BACKEND=jax and KERAS_DISTRIBUTION_* (README: "
                        "'Several processes, several hosts')")


# ------------------------------------------------------------------ joining
def join(job: Job, timeout: int) -> None:
    """jax.distributed.initialize for this process, within `timeout` seconds; each failure is one line."""
    import jax

    if job.index == 0:
        _check_port_free(job.coordinator)
    try:
        # keras.distribution.initialize() makes this same call without timeouts (5 min to join; a dead peer
        # noticed after 100 s with a C++ abort): the peer watchdog below must speak first.
        jax.distributed.initialize(job.coordinator, job.count, job.index, initialization_timeout=int(timeout),
                                   heartbeat_timeout_seconds=int(timeout) + 60)
    except Exception as e:
        said = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"process {job.index} of {job.count} could not join the job at {job.coordinator} within "
                        f"{timeout}s ({said}); start the same command on every host with KERAS_DISTRIBUTION_PROCESS_ID"
                        f"=0..{job.count - 1}, process 0 reachable at that address (train.peer_timeout={timeout})") from None


def _check_port_free(address: str) -> None:
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", int(port)))
        except OSError as e:
            raise UserError(f"port {port} of KERAS_DISTRIBUTION_JOB_ADDRESSES={address} is already in use on this host "
                            f"({e.strerror}); choose a free port (the same on every process)") from None


def index() -> int:
    """This process's number in its job (0 without one)."""
    import keras

    if keras.config.backend() == "jax":
        import jax

        if jax.distributed.is_initialized():
            return int(jax.process_index())
    return 0


def count() -> int:
    import keras

    if keras.config.backend() == "jax":
        import jax

        if jax.distributed.is_initialized():
            return int(jax.process_count())
    return 1


def is_chief() -> bool:
    """The process that writes (MLflow, checkpoints, model, predictions): process 0, or the only one."""
    return index() == 0


# ------------------------------------------------------------------ watching the others
class Peers:
    """The other processes of the job, watched from a daemon thread through files in a folder they all see."""

    def __init__(self, folder: Path, job: Job, timeout: float):
        self.folder, self.job, self.timeout = folder, job, float(timeout)
        self.on_abort: Callable[[str], None] | None = None  # e.g. end the MLflow run FAILED
        self._stop = threading.Event()

    def _file(self, i: int, kind: str) -> Path:
        return self.folder / f"{i}.{kind}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file(self.job.index, "alive").touch()
        threading.Thread(target=self._watch, name="peer-watchdog", daemon=True).start()

    def _watch(self) -> None:
        started = time.time()
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                self._file(self.job.index, "alive").touch()
            for i in range(self.job.count):
                if i != self.job.index and not self._file(i, "done").exists():
                    self._check(i, started)

    def _check(self, i: int, started: float) -> None:
        failed, alive = self._file(i, "failed"), self._file(i, "alive")
        if failed.exists():
            said = failed.read_text().strip() or "no reason given"
            self._abort(f"process {i} of {self.job.count} failed: {said}")
        seen = alive.stat().st_mtime if alive.exists() else started
        if time.time() - seen > self.timeout:
            self._abort(f"process {i} of {self.job.count} stopped answering {self.timeout:.0f}s ago (killed, or its "
                        f"host is down; train.peer_timeout={self.timeout:.0f})")

    def _abort(self, message: str) -> None:
        """This process is blocked in (or headed for) a collective that cannot finish: say why, and stop it."""
        print(f"error: {message}; process {self.job.index} stops too; rerun the same command on every host to resume "
              "from the last checkpoint", file=sys.stderr, flush=True)
        if self.on_abort is not None:
            with contextlib.suppress(Exception):
                self.on_abort(message)
        self.report("failed", message)
        os._exit(1)

    def report(self, kind: str, message: str = "") -> None:
        """This process is done ("done") or failing ("failed", with its one line) and stops watching."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._file(self.job.index, kind).write_text(message + "\n")
            self._file(self.job.index, "alive").unlink(missing_ok=True)


_PEERS: list[Peers] = []
_JOINED: list[Job] = []  # this process's job once it joined (kept after report(): the exit still needs it)
# What a collective says when a process it was waiting on is gone (Gloo's TCP pairs on CPU, NCCL and the
# coordination service on GPUs): found before the watchdog's timeout, it is the same failure.
_PEER_LOST = ("Gloo", "Connection reset", "Connection refused", "Broken pipe", "NCCL", "DEADLINE_EXCEEDED",
              "UNAVAILABLE:", "coordination service", "heartbeat")


def watch(job: Job, folder: Path, timeout: float) -> Peers:
    """Start watching the job's other processes; the folder is per job (the coordinator's address and the start
    minute, agreed by all processes), old jobs' folders are removed by process 0."""
    import numpy as np
    from jax.experimental import multihost_utils

    stamp = int(multihost_utils.broadcast_one_to_all(np.int64(time.time() // 60)))
    name = f"{job.coordinator.replace(':', '_')}-{stamp}"
    if job.index == 0 and folder.is_dir():
        for old in folder.iterdir():
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
    peers = Peers(folder / name, job, timeout)
    peers.start()
    _PEERS.append(peers)
    _JOINED.append(job)
    return peers


def report(kind: str, message: str = "") -> None:
    """Tell the job's other processes how this one ends (nothing without a job)."""
    while _PEERS:
        _PEERS.pop().report(kind, message)


def on_abort(callback: Callable[[str], None] | None) -> None:
    """What to do before this process stops because a peer failed (e.g. end the MLflow run FAILED)."""
    for p in _PEERS:
        p.on_abort = callback


def lost_peer(e: BaseException) -> str | None:
    """The one line for an error raised by a collective whose other side died (None: not in a job, or another
    error): one of the processes was killed or its host went down before the watchdog noticed."""
    text = f"{type(e).__name__}: {e}"
    if not _JOINED or not any(s in text for s in _PEER_LOST):
        return None
    job = _JOINED[-1]
    said = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200]
    return (f"process {job.index} of {job.count}: a collective with the other processes failed ({said}): one of them "
            "was killed or its host is down; rerun the same command on every host to resume from the last checkpoint")


def exit_process(code: int) -> NoReturn:
    """sys.exit, but in a job that joined without the interpreter's exit hooks: JAX's hook waits at a shutdown
    barrier for every process, which after a failure may never come (up to train.peer_timeout + 60 s, then a C++
    abort). The MLflow run is closed by then (training_run ends it as the error passes through)."""
    if not _JOINED:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def joined() -> bool:
    """This process joined a multi-process job."""
    return bool(_JOINED)
