"""Ctrl-C and SIGTERM: how a run is stopped without losing work.

Outside training, both signals raise KeyboardInterrupt at once, so every `with` block unwinds (temporary
files go, the MLflow run ends KILLED). While Keras' fit runs they are only recorded: an exception thrown
through a running fit can abort TensorFlow, so the training loop stops at the next batch end instead
(checkpoint.EpochEnd) and check() raises once fit has returned. A second signal during fit is immediate.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

_PENDING: list[str] = []  # the signals received; also read after Python swallowed the KeyboardInterrupt somewhere
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _name(signum: int) -> str:
    return "SIGTERM" if signum == signal.SIGTERM else "SIGINT"


def _raise(signum: int, frame: Any) -> None:
    _PENDING.append(_name(signum))
    raise KeyboardInterrupt(_name(signum))


def _record(signum: int, frame: Any) -> None:
    if _PENDING:  # the second signal: stop now
        _raise(signum, frame)
    _PENDING.append(_name(signum))


@contextlib.contextmanager
def _handlers(handler) -> Iterator[None]:
    try:
        previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    except ValueError:  # not the main thread (a launcher's worker thread): leave signals alone
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C: both raise KeyboardInterrupt."""
    _PENDING.clear()
    with _handlers(_raise):
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Only record the signals while the block runs (Keras' fit); raise afterwards, when it returns."""
    check()
    with _handlers(_record):
        yield
    check()


def pending() -> bool:
    return bool(_PENDING)


def check() -> None:
    """Raise KeyboardInterrupt if a signal arrived (even one that Python dropped where it landed, e.g. in a
    garbage-collector callback)."""
    if _PENDING:
        raise KeyboardInterrupt(_PENDING[-1])
