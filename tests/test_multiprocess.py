"""Several processes as one training job (src/multiprocess.py, src/runtime.py): two processes on this machine join as one
JAX distributed job (coordinator on 127.0.0.1, one CPU device each, KERAS_DISTRIBUTION_*), train a tiny model on the
same global batches as one process does (the same losses within float tolerance), record ONE MLflow run and write the
checkpoints and outputs once (process 0); one of them killed mid-run, the other stops by itself with one line (a
collective that lost its peer, or the watchdog within train.peer_timeout), and the same two commands resume from the
last checkpoint to the end, in the same MLflow run. TensorFlow's multi-worker mode is refused with its reason. Bad
input, one line each: a KERAS_DISTRIBUTION_* set that does not add up, a coordinator port already taken, a peer that
failed or went silent. An estimated 70-100 s on 2 quiet cores (the two-process job and its reference run, all at
once), 130 s measured at load 2-4 and 360 s at load 6-12 on the shared machine; the rest under a second.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, path_overrides
from src import multiprocess
from src.errors import UserError

jax_needed = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")

# seed_cnn without dropout or augmentation: nothing random per process. Batch 38 = the whole training set (38
# images), 19 per process: every epoch is one step over the same global batch, whatever the shuffle.
RUN = [*TINY, "model.dropout=0", "augment=none", "train.batch_size=38", "train.epochs=8",
       "train.early_stopping_patience=0", "seed=7", "train.peer_timeout=30"]


PEER_LOST = ("error: process 1 of 2 stopped answering", "error: process 0 of 2: a collective with the other processes failed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(base: Path, log: str, env: dict[str, str], *extra: str) -> subprocess.Popen:
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "KERAS_BACKEND": "jax", **env}
    e.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "src.train", *RUN, *path_overrides(base), *extra], cwd=ROOT, env=e,
                            stdout=open(base / f"{log}.out", "w"), stderr=open(base / f"{log}.err", "w"))


def _job(base: Path, port: int, tag: str) -> list[subprocess.Popen]:
    env = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}
    return [_start(base, f"{tag}-p{i}", {**env, "KERAS_DISTRIBUTION_PROCESS_ID": str(i)}, "train.distribute=data_parallel")
            for i in range(2)]


def _text(base: Path, name: str) -> str:
    return (base / name).read_text()


def _wait(procs: list[subprocess.Popen], base: Path, tag: str, timeout: float = 900) -> None:
    for i, p in enumerate(procs):
        assert p.wait(timeout=timeout) == 0, _text(base, f"{tag}-p{i}.out")[-2000:] + _text(base, f"{tag}-p{i}.err")[-3000:]


@pytest.mark.slow
@jax_needed
def test_two_processes_train_as_one_job_and_resume_after_a_death(tmp_path: Path):
    ref_base, base = tmp_path / "one", tmp_path / "two"
    ref_base.mkdir(), base.mkdir()
    started: list[subprocess.Popen] = []
    try:
        _job_killed_then_resumed(ref_base, base, started)
    finally:  # a failed assertion must not leave processes behind
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def _job_killed_then_resumed(ref_base: Path, base: Path, started: list[subprocess.Popen]) -> None:
    ref = _start(ref_base, "ref", {})  # one process, the same global batches
    started.append(ref)
    epoch = _kill_one_mid_run(base, started)

    # 2. the same two commands again: resumed, to the end
    second = _job(base, _free_port(), "second")
    started += second
    _wait(second, base, "second")
    assert ref.wait(timeout=900) == 0, _text(ref_base, "ref.err")[-3000:]
    for i in range(2):
        assert f"resuming after epoch {epoch}" in _text(base, f"second-p{i}.out")
        assert "data parallel over 2 replicas" in _text(base, f"second-p{i}.out")
    assert "process 1 of 2 done; process 0 writes the outputs" in _text(base, "second-p1.out")
    assert "model ->" not in _text(base, "second-p1.out") + _text(base, "first-p1.out")
    _check_same_losses(base, ref_base)
    _check_one_run_written_once(base)


def _kill_one_mid_run(base: Path, started: list[subprocess.Popen]) -> int:
    """1. The job; process 1 killed once process 0 has checkpointed an epoch: process 0 stops by itself with one
    line. The epoch it had checkpointed."""
    ckpt_state = base / "models" / "demo" / "seed_cnn" / "checkpoint" / "state.json"
    first = _job(base, _free_port(), "first")
    started += first
    t0 = time.monotonic()
    while not (ckpt_state.is_file() and json.loads(ckpt_state.read_text())["epoch"] >= 1):
        assert all(p.poll() is None for p in first), _text(base, "first-p0.err")[-3000:] + _text(base, "first-p1.err")[-2000:]
        assert time.monotonic() - t0 < 900, "the job did not checkpoint an epoch"
        time.sleep(0.02)
    first[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    assert first[0].wait(timeout=60) == 1
    assert time.monotonic() - killed_at < 30 + 30  # train.peer_timeout=30 (generous: a loaded machine), heartbeats every 2 s
    # process 0 notices either in a collective (Gloo: the connection reset) or by the watchdog (no heartbeat)
    err = _text(base, "first-p0.err").strip().splitlines()
    assert err[-1].startswith(PEER_LOST), err[-5:]
    assert "Traceback" not in _text(base, "first-p0.err"), err[-5:]
    epoch = json.loads(ckpt_state.read_text())["epoch"]
    assert 1 <= epoch < 8, "nothing left to resume"
    return epoch


def _check_same_losses(base: Path, ref_base: Path) -> None:
    """The same losses as one process on the same global batches, epoch by epoch, across the death and the resume."""
    model_dir, ref_dir = base / "models" / "demo" / "seed_cnn", ref_base / "models" / "demo" / "seed_cnn"
    two, one = json.loads((model_dir / "history.json").read_text()), json.loads((ref_dir / "history.json").read_text())
    assert [h["epoch"] for h in two] == list(range(1, 9))
    for key in ("loss", "val_log_loss", "val_accuracy"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], rel=1e-4, abs=1e-6), key
    assert two[-1]["loss"] < two[0]["loss"]  # it trained


def _check_one_run_written_once(base: Path) -> None:
    """ONE MLflow run (process 0's), FINISHED after its interruption, every epoch logged once; the outputs of one
    run, no checkpoint left, no temporaries, predictions for every image."""
    from mlflow.tracking import MlflowClient

    model_dir = base / "models" / "demo" / "seed_cnn"
    c = MlflowClient(f"sqlite:///{base}/mlflow.db")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    assert any(said in run.data.tags["previous_error"] for said in ("stopped answering", "Gloo")), run.data.tags
    assert run.data.tags["runtime.replicas"] == "2"
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss")) == list(range(1, 9))
    info = json.loads((model_dir / "run.json").read_text())
    assert info["run_id"] == run.info.run_id and info["epochs_run"] == 8
    assert not (model_dir / "checkpoint").exists()
    assert sorted(p.name for p in model_dir.iterdir() if not p.name.startswith(".")) == \
        ["config.yaml", "history.json", "model.keras", "predictions", "run.json"]
    assert [p for p in model_dir.rglob(".*") if p.name != ".processes" and ".processes" not in p.parts] == []
    assert len((model_dir / "predictions" / "test.csv").read_text().splitlines()) == 1 + 12


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("env,said", [
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}, "KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_PROCESS_ID not set"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "2",
      "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1234"}, "KERAS_DISTRIBUTION_PROCESS_ID=2 is not below"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
      "KERAS_DISTRIBUTION_JOB_ADDRESSES": "127.0.0.1:1234"}, "KERAS_DISTRIBUTION_NUM_PROCESSES='two' is not an integer"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "3", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
      "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234"}, "lists 2 addresses but KERAS_DISTRIBUTION_NUM_PROCESSES=3"),
    ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
      "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1"}, "expected host:port of process 0"),
])
def test_a_distribution_set_that_does_not_add_up_is_one_line(monkeypatch, env, said):
    for k in multiprocess.ENV:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError) as e:
        multiprocess.job_from_env()
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_job_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "10.0.0.1:1234,10.0.0.2:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "1")
    assert multiprocess.job_from_env() == multiprocess.Job("10.0.0.1:1234", 2, 1)
    with pytest.raises(UserError) as e:
        multiprocess.refuse_tensorflow_multiworker()
    assert "keras-team/keras#20585" in str(e.value) and "KERAS_BACKEND=jax" in str(e.value)


def test_distribution_variables_with_distribute_none_are_refused(monkeypatch):
    from conftest import checked

    monkeypatch.setenv("KERAS_DISTRIBUTION_JOB_ADDRESSES", "127.0.0.1:1234")
    monkeypatch.setenv("KERAS_DISTRIBUTION_NUM_PROCESSES", "2")
    monkeypatch.setenv("KERAS_DISTRIBUTION_PROCESS_ID", "0")
    with pytest.raises(UserError) as e:
        checked("train", *TINY)  # before any work: the config check
    assert "but train.distribute=none" in str(e.value)


def test_a_coordinator_port_already_taken_is_one_line():
    with socket.socket() as s:
        s.bind(("", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError) as e:
            multiprocess.join(multiprocess.Job(f"127.0.0.1:{port}", 2, 0), timeout=5)
    assert f"port {port} of KERAS_DISTRIBUTION_JOB_ADDRESSES=127.0.0.1:{port} is already in use" in str(e.value)


def test_the_watchdog_stops_a_process_whose_peer_failed_or_went_silent(tmp_path: Path, monkeypatch, capsys):
    """What the watchdog thread checks every 2 s (its exit is replaced by an exception here; in a job it ends the
    process)."""
    class Stopped(Exception):
        pass

    def fake_exit(code):
        raise Stopped(code)

    monkeypatch.setattr(multiprocess.os, "_exit", fake_exit)
    ended: list[str] = []
    peers = multiprocess.Peers(tmp_path, multiprocess.Job("127.0.0.1:1", 2, 0), timeout=5)
    peers.on_abort = ended.append
    peers.start()
    peers._stop.set()  # (the thread itself is not needed here)
    assert peers._file(0, "alive").is_file()

    peers._file(1, "alive").touch()
    peers._check(1, started=time.time() - 60)  # alive: nothing happens
    os.utime(peers._file(1, "alive"), (time.time() - 6, time.time() - 6))
    with pytest.raises(Stopped):
        peers._check(1, started=time.time())  # its heartbeat is 6 s old
    (tmp_path / "1.failed").write_text("config error: train.lr=-1 is not allowed\n")
    with pytest.raises(Stopped):
        peers._check(1, started=time.time())
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: process 1 of 2 stopped answering 5s ago (killed, or its host is down")
    assert err[1] == ("error: process 1 of 2 failed: config error: train.lr=-1 is not allowed; process 0 stops too; "
                      "rerun the same command on every host to resume from the last checkpoint")
    assert len(err) == 2 and len(ended) == 2 and (tmp_path / "0.failed").is_file()
    peers.report("done")
    assert not peers._file(0, "alive").exists()
