"""The train stage (src/train.py, src/checkpoint.py): what a killed, diverging or disk-starved run leaves, and the lock
that keeps two runs out of one model folder. A run killed at random points (SIGKILL twice, then SIGTERM, then
Ctrl-C) resumes from its checkpoint with the same command and ends exactly as an uninterrupted run would (history,
weights, one MLflow run that ends FINISHED; SIGTERM/SIGINT end it KILLED meanwhile, exit 143/130, one line). A
diverging run stops with one line naming train.lr, keeps the best checkpoint and publishes nothing; a full disk
while checkpointing is one line naming the file, with the previous checkpoint intact. While a run trains, a second
one with the same dataset and name is refused before any work. The subprocess-heavy tests are marked slow (they
still run in CI).
"""
from __future__ import annotations

import errno
import fcntl
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY, checked, path_overrides
from src import checkpoint, pipeline, train
from src.errors import UserError
from src.files import read_json


def _tiny(**over: str) -> list[str]:
    keys = {o.split("=")[0] for o in over.values()}
    return [o for o in TINY if o.split("=")[0] not in keys] + list(over.values())


def _tiny_cfg(base: Path, *extra: str):
    return checked("train", *_tiny(), *path_overrides(base), *extra)


def _only_run(base: Path, experiment: str = "kagglepipe-demo"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{base}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def _mlflow_run(base: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{base}/mlflow.db").get_run(run_id)


def _state(ckpt: Path) -> dict | None:
    try:
        return read_json(ckpt / "state.json")   # written atomically: it parses whenever it exists
    except FileNotFoundError:
        return None


def _check_checkpoint(ckpt: Path) -> dict:
    """After a kill: state.json names only complete files; leftovers are dot-named temporaries no stage reads."""
    st = _state(ckpt)
    assert st is not None
    visible = {p.name for p in ckpt.iterdir() if not p.name.startswith(".")}
    assert visible == {"state.json", "last.keras", "best.keras"}, visible
    for name in ("last.keras", "best.keras"):
        with zipfile.ZipFile(ckpt / name) as z:
            assert z.testzip() is None
    assert [h["epoch"] for h in st["history"]] == list(range(1, st["epoch"] + 1))
    return st


# ------------------------------------------------------------------ interrupted training
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


def _signal_at_random(proc: subprocess.Popen, sig: int, rng: random.Random, max_delay: float) -> None:
    time.sleep(rng.uniform(0, max_delay))
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=120)


@pytest.mark.slow
def test_killed_training_resumes_to_the_configured_epochs(tmp_path: Path):
    """SIGKILL twice at random points, then SIGTERM, then Ctrl-C; the same command finishes the run exactly once,
    with the same history and weights as an uninterrupted run of the same command.

    Resume keeps model, optimizer state, epoch count, history, random-generator states and the MLflow run;
    SIGTERM/SIGINT end the MLflow run KILLED (not RUNNING); no partial file is ever named by the checkpoint or
    read by a stage.
    """
    import keras

    import src.models  # noqa: F401  (registers the custom layers: models load without custom_objects)

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

    last = keras.saving.load_model(ckpt / "last.keras")
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
    model = keras.saving.load_model(model_dir / "model.keras")
    assert model.count_params() == last.count_params()

    # 6. the killed-and-resumed run trained exactly as an uninterrupted one: each epoch's batches depend on
    # (seed, epoch) only, and the augmentation/dropout generators' states come back with the checkpoint
    log = tmp_path / "run6"
    p = _launch([*cmd, "name=uninterrupted"], log)
    assert p.wait(timeout=600) == 0, log.with_suffix(".err").read_text()[-3000:]
    plain = read_json(model_dir.parent / "uninterrupted" / "history.json")
    for key in ("loss", "val_log_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in history], [h[key] for h in plain], rtol=1e-5, err_msg=key)
    other = keras.saving.load_model(model_dir.parent / "uninterrupted" / "model.keras")
    for w, v in zip(model.get_weights(), other.get_weights()):
        np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ numerical failure
@pytest.mark.slow
def test_absurd_learning_rate_stops_with_one_line_and_failed_run(tmp_path: Path):
    with pytest.raises(UserError) as e:
        pipeline.run(_tiny_cfg(tmp_path, "train.lr=1e6", "train.optimizer=sgd", "train.epochs=3"), "train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("training diverged:") and "train.lr" in msg, msg
    assert "became nan" in msg or "became inf" in msg, msg
    run = _only_run(tmp_path)
    assert run.info.status == "FAILED" and "diverged" in run.data.tags["error"]
    model_dir = tmp_path / "models" / "demo" / "seed_cnn"
    assert not (model_dir / "model.keras").exists()                        # nothing diverged is published
    assert not (model_dir / "predictions").exists()


@pytest.mark.slow
def test_divergence_after_a_good_epoch_keeps_the_best_checkpoint(tmp_path: Path, monkeypatch):
    """The loss turns NaN in epoch 2 (injected): the run stops there, epoch 1's checkpoint is kept and named."""
    class PoisonedEpochEnd(checkpoint.EpochEnd):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                logs = {**(logs or {}), "loss": float("nan")}
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(checkpoint, "EpochEnd", PoisonedEpochEnd)
    with pytest.raises(UserError) as e:
        pipeline.run(_tiny_cfg(tmp_path, "train.epochs=3"), "train")
    msg = str(e.value)
    ckpt = tmp_path / "models" / "demo" / "seed_cnn" / "checkpoint"
    assert "\n" not in msg and "loss became nan at epoch 2" in msg and str(ckpt / "best.keras") in msg, msg
    st = _check_checkpoint(ckpt)
    assert st["epoch"] == 1 and st["best_epoch"] == 0
    run = _only_run(tmp_path)
    assert run.info.status == "FAILED" and "loss became nan" in run.data.tags["error"]


# ------------------------------------------------------------------ full disk
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.slow
def test_disk_full_while_checkpointing(tmp_path: Path, monkeypatch):
    """ENOSPC on epoch 2's checkpoint: one clear error naming the file, epoch 1's checkpoint intact, run FAILED."""
    cfg = _tiny_cfg(tmp_path, "train.epochs=3")
    pipeline.run(cfg, "prepare")
    real_replace = os.replace
    calls = {"last.keras": 0}

    def replace(src, dst):
        if Path(dst).name == "last.keras":
            calls["last.keras"] += 1
            if calls["last.keras"] == 2:
                _enospc()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserError) as e:
        train.run(cfg)
    monkeypatch.undo()
    ckpt = tmp_path / "models" / "demo" / "seed_cnn" / "checkpoint"
    assert str(ckpt / "last.keras") in str(e.value) and "no space left" in str(e.value) and "\n" not in str(e.value)
    st = _check_checkpoint(ckpt)
    assert st["epoch"] == 1
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]
    assert _only_run(tmp_path).info.status == "FAILED"


# ------------------------------------------------------------------ one run per model folder
def test_a_second_run_with_the_same_name_is_refused_while_the_first_trains(tmp_path: Path):
    """Two runs with one dataset and name would share a checkpoint folder (and the first to finish would delete
    the other's): while one trains, the folder is locked and a second gets one line, before any work."""
    cfg = _tiny_cfg(tmp_path, "tracking.enabled=false")
    model_dir = tmp_path / "models" / "demo" / "seed_cnn"
    model_dir.mkdir(parents=True)
    fd = os.open(model_dir, os.O_RDONLY)  # what a running `python -m src.train` holds
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(UserError, match=r"another training run is writing to .*seed_cnn \(name=seed_cnn\)") as e:
            train.run(cfg)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "processed").exists() and list(model_dir.iterdir()) == []  # refused before any work
    finally:
        os.close(fd)
    assert pipeline.run(cfg, "train")["epochs_run"] == 1  # released: the same command runs


def test_speed_run_settings_skip_checkpoints_and_validate_the_last_epoch_only(tmp_path: Path, monkeypatch):
    """train.checkpoint_every=0 writes no checkpoint file while training (the best weights stay in memory) and
    still publishes the best epoch; train.validation_freq=k validates every k-th epoch, and only those compete."""
    saved: list[str] = []
    real = checkpoint.save_model_atomic
    monkeypatch.setattr(checkpoint, "save_model_atomic", lambda model, path: (saved.append(Path(path).name),
                                                                              real(model, path)))
    cfg = _tiny_cfg(tmp_path, "tracking.enabled=false", "train.epochs=4", "train.early_stopping_patience=0",
                    "train.checkpoint_every=0", "train.validation_freq=2")
    summary = pipeline.run(cfg, "train")
    history = read_json(tmp_path / "models" / "demo" / "seed_cnn" / "history.json")
    assert [("val_log_loss" in h) for h in history] == [False, True, False, True]
    assert summary["best_epoch"] in (2, 4)
    best = min((h for h in history if "val_log_loss" in h), key=lambda h: h["val_log_loss"])
    assert summary["best_val_log_loss"] == pytest.approx(best["val_log_loss"])
    assert saved == ["model.keras"]  # no last.keras or best.keras during training: only the published model
    import keras

    from src import manifests
    from src.data import val_dataset
    from src.paths import Layout

    model = keras.saving.load_model(tmp_path / "models" / "demo" / "seed_cnn" / "model.keras")
    m = manifests.load(Layout(cfg))
    model.compile(loss="binary_crossentropy", metrics=[keras.metrics.BinaryCrossentropy(name="log_loss")])
    assert model.evaluate(val_dataset(m, 64), verbose=0, return_dict=True)["log_loss"] == pytest.approx(
        best["val_log_loss"], rel=1e-4)  # the published model is the best validated epoch's
    with pytest.raises(UserError, match=r"train.validation_freq=3 .* a divisor of train.epochs \(4\)"):
        checked("train", *_tiny(), *path_overrides(tmp_path), "train.epochs=4", "train.validation_freq=3")
