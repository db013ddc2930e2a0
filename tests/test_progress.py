"""Progress (src/progress.py): on a terminal, tqdm bars for prepare and inference and Keras' own bar inside each
training epoch (checked through the CLI on a pseudo-terminal); in a log (a pipe, as in this suite), one plain line
every KAGGLEPIPE_PROGRESS_SECONDS with count, rate and ETA (training: batches and the loss inside an epoch), and
nothing at all for work shorter than that.
"""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, path_overrides
from src import progress
from src.errors import UserError


def test_a_log_gets_a_line_every_interval_and_nothing_for_short_work(monkeypatch, capsys):
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    monkeypatch.delenv(progress.SECONDS_ENV, raising=False)
    assert progress.mode() == "lines"  # pytest's stdout is no terminal
    assert list(progress.track(range(500), "prepare: train", total=500, unit="img")) == list(range(500))
    assert capsys.readouterr().out == ""  # well under 30 s: nothing
    monkeypatch.setenv(progress.SECONDS_ENV, "1e-9")  # every update is due
    with progress.bar("inference: test", total=40, unit="img") as shown:
        for _ in range(4):
            shown.update(10)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert re.fullmatch(r"inference: test 10/40 img \(25%\), [\d.]+ img/s, ETA \d+:\d\d", lines[0]), lines[0]
    assert lines[-1].startswith("inference: test 40/40 img (100%)") and lines[-1].endswith("ETA 0:00")


def test_modes_and_bad_settings(monkeypatch, capsys):
    monkeypatch.setenv(progress.SECONDS_ENV, "1e-9")
    monkeypatch.setenv(progress.MODE_ENV, "off")
    list(progress.track(range(3), "x", total=3))
    assert capsys.readouterr().out == "" and progress.train_callbacks(2, 3) == [] and progress.fit_verbosity() == 0
    monkeypatch.setenv(progress.MODE_ENV, "bar")  # forced: tqdm even into a pipe, Keras' bar in fit
    assert progress.fit_verbosity() == 1
    list(progress.track(range(3), "forced", total=3))
    assert "\rforced:   0%|" in capsys.readouterr().out
    for env, value, words in ((progress.MODE_ENV, "loud", "one of auto, bar, lines, off"),
                              (progress.SECONDS_ENV, "0", "a number of seconds > 0")):
        monkeypatch.setenv(progress.MODE_ENV, "lines")
        monkeypatch.setenv(env, value)
        with pytest.raises(UserError, match=re.escape(words)) as e:
            list(progress.track(range(3), "x"))
        assert f"{env}={value!r}" in str(e.value)


def test_keras_fit_and_predict_report_inside_the_work_in_a_log(monkeypatch, capsys):
    import keras
    import numpy as np

    monkeypatch.setenv(progress.MODE_ENV, "lines")
    monkeypatch.setenv(progress.SECONDS_ENV, "1e-9")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile("sgd", "binary_crossentropy")
    x, y = np.zeros((24, 4), "float32"), np.ones((24, 1), "float32")
    model.fit(x, y, batch_size=8, epochs=2, callbacks=progress.train_callbacks(2, 3), verbose=progress.fit_verbosity())
    with progress.bar("inference: val", total=24, unit="img") as shown:
        model.predict(x, batch_size=10, callbacks=[progress.predict_callback(shown)], verbose=0)
    lines = capsys.readouterr().out.splitlines()
    fit = [ln for ln in lines if ln.startswith("train:")]
    assert len(fit) == 6 and re.fullmatch(r"train: epoch 2/2: 3/3 batch \(100%\), .*, loss=\d\.\d{4}", fit[-1]), fit
    assert [ln.split(" img")[0] for ln in lines if ln.startswith("inference")] == [
        "inference: val 10/24", "inference: val 20/24", "inference: val 24/24"]  # images, not batches


def _on_a_terminal(cmd: list[str], env: dict, timeout: float = 300) -> tuple[int, str]:
    """Run cmd with stdout and stderr on a pseudo-terminal (80x24), as in a user's terminal; rc and what it showed."""
    import fcntl
    import pty
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif p.poll() is not None:
                break
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return p.wait(), out.decode("utf-8", "replace")


@pytest.mark.slow
def test_a_terminal_shows_bars_inside_the_work(tmp_path: Path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TERM": "xterm"}
    env.pop(progress.MODE_ENV, None)
    rc, shown = _on_a_terminal([sys.executable, "-m", "src.train", *TINY, "train.epochs=2", *path_overrides(tmp_path),
                                "tracking.enabled=false", f"hydra.run.dir={tmp_path}/hydra"], env)
    assert rc == 0, shown[-3000:]
    shown = re.sub(r"\x1b\[[0-9;]*m", "", shown)  # Keras' colours
    assert re.search(r"prepare: train: +\d+%.*\d+/\d+ \[", shown)        # tqdm: count ...
    assert re.search(r"prepare: test: .*img/s", shown)                  # ... and rate, ETA
    assert re.search(r"inference: test: .*12/12", shown)
    assert "Epoch 1/2" in shown and "Epoch 2/2" in shown and "━" in shown  # Keras' own bar inside each epoch
    assert re.search(r"\d+/\d+ .*━.* - loss: ", shown)
    for n in (1, 2):  # the epoch's one line starts a line of its own, after Keras' bar has ended its line
        assert re.search(rf"(^|\n)train: epoch {n}: accuracy=", shown.replace("\r\n", "\n")), shown[-2000:]
