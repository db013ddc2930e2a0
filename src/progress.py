"""Progress while long work runs: a live bar on a terminal, a plain line every so often in a log.

    for err in progress.track(results, "prepare: train", total=len(jobs), unit="img"): ...
    with progress.bar("inference: test", total=n, unit="img") as bar: ... bar.update(k)

On a terminal (stdout is a TTY) the bar is tqdm's: count, rate and ETA, redrawn in place; training shows Keras'
own per-batch bar inside each epoch (fit_verbosity). Anywhere else (a log file, a pipe, CI, the test suite) a
plain line such as `inference: test 3072/12500 img (25%), 410 img/s, ETA 0:23` every 30 seconds, and nothing at
all for work that ends sooner; training adds such a line inside long epochs (train_callbacks) to its one line
per epoch. How to choose, from the environment rather than the config (it changes what is shown, never what is
computed, so it is no run parameter): KAGGLEPIPE_PROGRESS=auto|bar|lines|off (auto: bar on a terminal, else
lines) and KAGGLEPIPE_PROGRESS_SECONDS=30 (how often a line is written).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import UserError

MODE_ENV, SECONDS_ENV = "KAGGLEPIPE_PROGRESS", "KAGGLEPIPE_PROGRESS_SECONDS"
MODES = ("auto", "bar", "lines", "off")
T = TypeVar("T")


def mode() -> str:
    """bar, lines or off, from KAGGLEPIPE_PROGRESS (auto: bar when stdout is a terminal, else lines)."""
    chosen = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if chosen not in MODES:
        raise UserError(f"{MODE_ENV}={os.environ[MODE_ENV]!r} is not allowed; expected one of {', '.join(MODES)} "
                        "(or unset it)")
    if chosen != "auto":
        return chosen
    return "bar" if _stdout_is_terminal() else "lines"


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def interval() -> float:
    """Seconds between two lines in lines mode (KAGGLEPIPE_PROGRESS_SECONDS, default 30)."""
    raw = os.environ.get(SECONDS_ENV, "30")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{SECONDS_ENV}={raw!r} is not allowed; expected a number of seconds > 0 (or unset it)")
    return seconds


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Lines:
    """The log form of a bar: one line each `interval` seconds (none for shorter work), the same counts."""

    def __init__(self, desc: str, total: int | None, unit: str, every: float):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.n = 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int = 1, postfix: Callable[[], str] | None = None) -> None:
        """Count n more; postfix (called only when a line is due) adds to it, e.g. the current loss."""
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now, postfix() if postfix else ""), flush=True)

    def line(self, now: float, postfix: str = "") -> str:
        rate = self.n / max(now - self.t0, 1e-9)
        if self.total:
            eta = _clock((self.total - self.n) / rate) if rate > 0 else "?"
            head = f"{self.n}/{self.total} {self.unit} ({self.n / self.total:.0%}), {rate:.1f} {self.unit}/s, ETA {eta}"
        else:
            head = f"{self.n} {self.unit}, {rate:.1f} {self.unit}/s"
        return f"{self.desc} {head}" + (f", {postfix}" if postfix else "")

    def close(self) -> None:
        pass


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def bar(desc: str, total: int | None = None, unit: str = "it") -> Iterator[Any]:
    """A progress display to update(n): tqdm on a terminal, Lines in a log, nothing with KAGGLEPIPE_PROGRESS=off."""
    how = mode()
    if how == "bar":
        from tqdm import tqdm

        shown = tqdm(total=total, desc=desc, unit=unit, file=sys.stdout, dynamic_ncols=True, leave=False)
    else:
        shown = Lines(desc, total, unit, interval()) if how == "lines" else _Silent()
    try:
        yield shown
    finally:
        shown.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate over items, showing progress (one unit per item)."""
    with bar(desc, total, unit) as b:
        for item in items:
            yield item
            b.update(1)


# ------------------------------------------------------------------ Keras
def fit_verbosity() -> int:
    """model.fit's verbose: Keras' own progress bar (1) on a terminal; none (0) otherwise, where the epoch-end
    callback prints one line per epoch and train_callbacks a line every so often inside long epochs."""
    return 1 if mode() == "bar" else 0


def train_callbacks(epochs: int, steps: int) -> list:
    """The callbacks to put before any that print at an epoch's end. bar: Keras' own bar, placed first so that it
    ends its line before the next callback prints (Keras would append it last); lines: a line every
    KAGGLEPIPE_PROGRESS_SECONDS inside an epoch (batches, rate, ETA, loss)."""
    how = mode()
    if how == "off":
        return []
    import keras

    if how == "bar":
        return [keras.callbacks.ProgbarLogger()]
    every = interval()

    class EpochLines(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.lines = Lines(f"train: epoch {epoch + 1}/{epochs}:", steps, "batch", every)

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            # the loss is read only when a line is due: reading it every batch would wait for the device
            self.lines.update(1, lambda: f"loss={float(logs['loss']):.4f}" if logs and "loss" in logs else "")

    return [EpochLines()]


def predict_callback(shown: Any) -> Any:
    """A Keras callback that advances `shown` (a bar) by the number of images in each predicted batch."""
    import keras

    class PredictProgress(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch: int, logs: dict | None = None) -> None:
            outputs = (logs or {}).get("outputs")
            shown.update(int(outputs.shape[0]) if hasattr(outputs, "shape") else 1)

    return PredictProgress()
