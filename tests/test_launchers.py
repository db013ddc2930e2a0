"""Parallel sweeps through Hydra's launcher plugins (src/launchers.py, conf/hydra/launcher/, src/tracking.py
SweepParentRun): two tiny jobs at once with hydra/launcher=joblib on one SQLite store (WAL, busy timeout: concurrent
writers), one MLflow parent with both jobs as children, each job's outputs in its own place, the dataset prepared
once for both (prepare's lock). The submitit_local path runs against a real tracking server in
tests/test_tracking_server.py. Bad input, each one line: an unknown launcher, a plugin that is not installed, a
SLURM sweep on a SQLite file, a job process that dies (joblib, submitit), a job over joblib's timeout, a job's own
error line. The parent's id reaches a job that did not inherit the sweep's environment through the sweep folder.
117 s measured at load 2-4 on the shared 2 cores (the joblib sweep 80 s, the dying jobs 35 s), 150-180 s at load
4-12.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, path_overrides, run_cli
from src import cli, launchers, tracking
from src.errors import UserError


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def sweep_runs(uri: str) -> tuple[object, list]:
    """The store's one sweep parent and its children."""
    c = _client(uri)
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1, [(r.info.run_name, r.data.tags) for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 1 + len(children)  # nothing outside the sweep
    return parents[0], children


def check_sweep(uri: str, base: Path, launcher: str) -> list:
    """Two jobs, both FINISHED children of one FINISHED parent, each with its epoch metric and its own model."""
    parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "2"
    assert parent.data.tags["sweep.launcher"] == launcher
    assert sorted(c.info.run_name for c in children) == ["seed_cnn-0", "seed_cnn-1"]
    c = _client(uri)
    for child in children:
        assert child.info.status == "FINISHED", child.data.tags.get("error")
        assert [m.step for m in c.get_metric_history(child.info.run_id, "loss")] == [1]
        assert {child.data.params["train.lr"]} <= {"0.001", "0.0003"}
        assert (base / "models" / "demo" / child.info.run_name / "model.keras").is_file()
    assert {ch.data.params["train.lr"] for ch in children} == {"0.001", "0.0003"}
    assert {p.name for p in (base / "multirun").iterdir() if p.is_dir() and not p.name.startswith(".")} == {"0", "1"}
    return children


@pytest.mark.slow
def test_joblib_sweep_runs_two_jobs_at_once_on_one_sqlite_store(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t0 = time.monotonic()
    # prepare.workers=2: a pool started inside a joblib (loky) worker (its start method must not be loky's)
    r = run_cli("src.train", "-m", "hydra/launcher=joblib", *TINY, *path_overrides(tmp_path), "train.lr=1e-3,3e-4",
                "prepare.workers=2", f"hydra.sweep.dir={tmp_path}/multirun", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ConfigStore schema" not in r.stderr  # the launcher files replace the plugins' defaults quietly
    children = check_sweep(uri, tmp_path, "joblib")
    # at once: each job's run started before the other's ended
    (a, b) = sorted(children, key=lambda c: c.info.start_time)
    assert b.info.start_time < a.info.end_time, "the jobs ran one after the other"
    out = r.stdout + r.stderr
    # prepared once: the job that came second waited for the first's prepare (its lock), then found it up to date
    assert out.count("generating the demo dataset") == 1 and out.count("prepare: 38 train + 10 val") == 1, out
    assert "2 workers" in out, out
    assert sqlite3.connect(tmp_path / "mlflow.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    print(f"joblib sweep: {time.monotonic() - t0:.0f}s")


# ------------------------------------------------------------------ bad input
def test_unknown_launcher_or_missing_plugin_is_one_line(tmp_path: Path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        cli.precheck_overrides(["-m", "hydra/launcher=nope", "train.lr=1,2"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: hydra/launcher=nope is not a launcher here") and "joblib" in err and "submitit_slurm" in err

    (tmp_path / "ray.yaml").write_text("_target_: hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher\n")
    monkeypatch.setattr(launchers, "LAUNCHERS", tmp_path)
    with pytest.raises(UserError) as e:
        launchers.check(["-m", "hydra/launcher=ray"])
    assert "needs Hydra's launcher plugin hydra-ray-launcher, which is not installed; pip install hydra-ray-launcher" in str(e.value)
    launchers.check(["-m", "hydra/launcher=basic"])  # Hydra's own


def test_installed_launchers_pass_the_check():
    for name in ("joblib", "submitit_local", "submitit_slurm"):
        launchers.check(["-m", f"hydra/launcher={name}"])
    assert launchers._pinned("hydra-joblib-launcher") == "hydra-joblib-launcher==1.2.0"


def _hydra_config(tmp_path: Path, *overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_slurm_sweep_on_a_sqlite_file_is_refused(tmp_path: Path):
    cfg = _hydra_config(tmp_path, "hydra/launcher=submitit_slurm", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 240  # our defaults
    with pytest.raises(UserError) as e:
        tracking.SweepParentRun().on_multirun_start(cfg)
    assert "cannot share the MLflow store sqlite:///" in str(e.value) and "tracking.uri=http://" in str(e.value)
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched


def test_a_job_without_the_sweeps_environment_finds_its_parent_in_the_sweep_folder(tmp_path: Path, monkeypatch):
    from hydra.types import RunMode

    cfg = OmegaConf.create({"tracking": {"enabled": True}, "hydra": {"mode": RunMode.MULTIRUN, "runtime": {
        "cwd": str(tmp_path)}, "sweep": {"dir": "multirun/x"}}})
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    tracking.SweepParentRun().on_job_start(cfg)
    assert tracking.PARENT_ENV not in os.environ  # no sweep file: nothing to join
    (tmp_path / "multirun" / "x").mkdir(parents=True)
    (tmp_path / "multirun" / "x" / ".mlflow_parent_run.json").write_text('{"run_id": "abc123", "tracking_uri": "x"}')
    tracking.SweepParentRun().on_job_start(cfg)
    assert os.environ[tracking.PARENT_ENV] == "abc123"
    cfg.hydra.mode = RunMode.RUN  # a single run never joins a sweep
    monkeypatch.delenv(tracking.PARENT_ENV)
    tracking.SweepParentRun().on_job_start(cfg)
    assert tracking.PARENT_ENV not in os.environ


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_job_that_dies_or_fails_ends_the_sweep_with_one_line(tmp_path: Path):
    import submitit
    from joblib import Parallel, delayed

    with pytest.raises(Exception) as e:  # joblib's loky worker killed (what an out-of-memory kill looks like)
        Parallel(n_jobs=2)(delayed(_kill_self)() for _ in range(2))
    line, code = launchers.failure(e.value)
    assert code == 1 and "a sweep job's process died (exit" in line and "SIGKILL" in line and "\n" not in line

    with pytest.raises(Exception) as e:  # joblib's timeout (hydra.launcher.timeout)
        Parallel(n_jobs=2, timeout=0.5)(delayed(time.sleep)(5) for _ in range(2))
    line, code = launchers.failure(e.value)
    assert code == 1 and "hydra.launcher.timeout" in line

    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="local")
    # (functions a submitit job can unpickle: this test module is not importable there)
    for args, want, want_code in (((os.abort,), "ended without a result", 1),
                                  ((sys.exit, "error: config error: train.lr=-1 is not allowed"),
                                   "failed: config error: train.lr=-1 is not allowed", 2)):
        job = ex.submit(*args)
        with pytest.raises(Exception) as e:
            job.results()
        line, code = launchers.failure(e.value)
        assert want in line and code == want_code and "\n" not in line, line
        assert f"its log: {tmp_path}/{job.job_id}/{job.job_id}_0_log.err" in line
    assert launchers.failure(ValueError("a bug")) is None  # anything else keeps its traceback
