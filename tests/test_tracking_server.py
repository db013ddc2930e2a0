"""A shared MLflow tracking server: a real `mlflow server` on 127.0.0.1 (a free port, a SQLite backend store, artifacts
served by the server with --artifacts-destination), tracking.uri=http://127.0.0.1:<port>. A submitit_local sweep of
two tiny jobs at once, its parent, evaluate and predict attaching their files, and a run interrupted then resumed all
land there complete, every run FINISHED, the artifacts in the server's own folder. A server that is down, or that
answers with an error: one line naming the URI, exit 2, and nothing started (no prepare, no model folder).
~60 s on 2 quiet cores (the server's start ~10 s, the sweep ~40 s), 190 s measured at load 10 on the shared machine;
the rest a few seconds.
"""
from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import TINY, checked, path_overrides, run_cli
from src import cli, pipeline, tracking
from test_launchers import check_sweep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1; stopped at the end of the module."""
    from mlflow.tracking import MlflowClient

    base = tmp_path_factory.mktemp("server")
    db = base / "backend.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # migrated here: the server then starts in seconds
    port = free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the server and its uvicorn worker
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (base / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or busy starting
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri, base / "artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _server_overrides(base: Path, uri: str) -> list[str]:
    return [*TINY, *path_overrides(base), f"tracking.uri={uri}"]


@pytest.mark.slow
def test_sweep_evaluate_and_predict_land_on_the_server(tmp_path: Path, server):
    uri, artifacts = server
    pipeline.run(checked("prepare", *_server_overrides(tmp_path, uri)), "prepare")
    r = run_cli("src.train", "-m", "hydra/launcher=submitit_local", *_server_overrides(tmp_path, uri),
                "train.lr=1e-3,3e-4", f"hydra.sweep.dir={tmp_path}/multirun", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    children = check_sweep(uri, tmp_path, "submitit_local")
    (a, b) = sorted(children, key=lambda c: c.info.start_time)
    assert b.info.start_time < a.info.end_time, "the jobs ran one after the other"
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    # evaluate + predict of job 0 attach their results to its run, on the server
    job0 = next(c for c in children if c.info.run_name == "seed_cnn-0")
    record = pipeline.run(checked("predict", *_server_overrides(tmp_path, uri), "name=seed_cnn-0"), "predict")
    assert record["run_id"] == job0.info.run_id and record["tracking_uri"] == uri
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    run = c.get_run(job0.info.run_id)
    assert run.info.status == "FINISHED" and "eval.val_log_loss" in run.data.metrics
    assert run.data.tags["submission.sha256"] == record["sha256"]
    names = {a.path for folder in ("submission", "evaluation", "model") for a in c.list_artifacts(run.info.run_id, folder)}
    assert {"submission/demo-seed_cnn-0.csv", "evaluation/seed_cnn-0.json", "model/model.keras"} <= names
    served = {p.name for p in artifacts.rglob("*") if p.is_file()}  # stored by the server, in its own folder
    assert {"demo-seed_cnn-0.csv", "model.keras", "config.yaml"} <= served
    every = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert {x.info.status for x in every} == {"FINISHED"}, [(x.info.run_name, x.info.status) for x in every]


def test_a_resumed_run_on_the_server_ends_complete(tmp_path: Path, server):
    from mlflow.tracking import MlflowClient

    uri, _ = server
    cfg = checked(None, *_server_overrides(tmp_path, uri), "tracking.experiment=resume-on-server")
    with pytest.raises(KeyboardInterrupt):
        with tracking.training_run(cfg, "resumed") as run:
            run.log_params({"train.lr": 0.001})
            run.log_metrics({"loss": 0.9}, step=1)
            raise KeyboardInterrupt("SIGTERM")
    c = MlflowClient(uri)
    assert c.get_run(run.id).info.status == "KILLED"
    with tracking.training_run(cfg, "resumed", resume_id=run.id) as again:
        again.log_params({"train.lr": 0.001, "train.epochs": 2})  # a resumed run logs no param twice
        again.log_metrics({"loss": 0.5}, step=2)
    done = c.get_run(run.id)
    assert again.id == run.id and done.info.status == "FINISHED" and "error" not in done.data.tags
    assert done.data.tags["previous_error"].startswith("interrupted")
    assert [(m.step, m.value) for m in c.get_metric_history(run.id, "loss")] == [(1, 0.9), (2, 0.5)]
    assert done.data.params == {"train.lr": "0.001", "train.epochs": "2"}


def _one_line_exit(capsys, cfg) -> str:
    with pytest.raises(SystemExit) as e:
        cli.run("train", cfg)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_server_that_is_down_stops_before_any_work(tmp_path: Path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    err = _one_line_exit(capsys, checked(None, *_server_overrides(tmp_path, uri)))
    assert err.startswith(f"error: MLflow tracking server {uri} is unreachable (connection error)"), err
    assert "tracking.enabled=false" in err and time.monotonic() - t0 < 30  # no minutes of retries
    assert not (tmp_path / "processed").exists() and not (tmp_path / "models").exists()  # nothing started


class _Broken(http.server.BaseHTTPRequestHandler):
    status = 500

    def do_GET(self):  # noqa: N802
        self.send_response(self.status)
        self.end_headers()
        self.wfile.write(b"Internal Server Error: the database is gone" if self.status == 500 else b"<html>no</html>")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status,said", [(500, "answered HTTP 500 (Internal Server Error: the database is gone)"),
                                         (404, "answered HTTP 404 (<html>no</html>); is it an MLflow server")])
def test_a_server_that_answers_with_an_error_is_one_line(tmp_path: Path, capsys, status, said):
    handler = type("Handler", (_Broken,), {"status": status})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{httpd.server_address[1]}"
        err = _one_line_exit(capsys, checked(None, *_server_overrides(tmp_path, uri)))
        assert err.startswith(f"error: MLflow tracking server {uri} {said}"), err
        assert not (tmp_path / "models").exists()
    finally:
        httpd.shutdown()
