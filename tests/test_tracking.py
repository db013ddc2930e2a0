"""MLflow tracking (src/tracking.py), read back with MlflowClient: one store, complete runs, sweeps under a parent,
failures FAILED, interruptions KILLED. training_run opens (or resumes) a training run: it ends FINISHED, FAILED with
the error as a tag, or KILLED on Ctrl-C; a resumed run logs no param twice and keeps its earlier error as
previous_error; inside a sweep (KAGGLEPIPE_MLFLOW_PARENT_RUN) a failing child fails its parent at once. attach adds
metrics, tags and artifacts to a finished run without changing its status; an unknown run id is one line. Stages log
params, per-epoch metrics, tags and artifacts, and a submission CSV leads back to its run. In process where possible
(TensorFlow is imported once); the sweeps run through the CLI.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, compose, path_overrides
from imagegen import three_class
from src import evaluate, pipeline, predict, tracking
from src.errors import UserError
from src.files import read_json

EPOCH_METRICS = ["loss", "val_loss", "log_loss", "val_log_loss", "accuracy", "val_accuracy"]
NOISE = ["alembic", "View run", "Creating initial MLflow database", "Updating database tables", "INFO mlflow"]


def _client(base: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{base}/mlflow.db")


def _runs(base: Path) -> list:
    c = _client(base)
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def _steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Raw and processed demo data shared by the in-process tests (each keeps its own models and store)."""
    return tmp_path_factory.mktemp("data")


def _ov(base: Path, data: Path, *extra: str) -> list[str]:
    return [*TINY, *path_overrides(base), f"paths.raw={data}/raw", f"paths.processed={data}/processed", *extra]


# ------------------------------------------------------------------ the store
def test_store_resolution_and_precedence(tmp_path: Path, monkeypatch):
    from src.paths import PROJECT_ROOT

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    cfg = compose()
    assert tracking.tracking_uri(cfg) == tracking.default_uri() == default
    monkeypatch.chdir(tmp_path)                                  # the working directory does not matter
    assert tracking.tracking_uri(compose()) == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert tracking.tracking_uri(compose()) == f"sqlite:///{tmp_path}/env.db"                          # env > default
    assert tracking.tracking_uri(compose(f"tracking.uri=sqlite:///{tmp_path}/x.db")) == f"sqlite:///{tmp_path}/x.db"  # explicit > env
    assert tracking.tracking_uri(compose("tracking.uri=sqlite:///rel/x.db")) == f"sqlite:///{PROJECT_ROOT}/rel/x.db"
    assert not tracking.enabled(compose("tracking.enabled=false"))


def test_interrupted_run_ends_killed_and_resumes_without_logging_a_param_twice(tmp_path: Path, store: Path):
    """KeyboardInterrupt -> KILLED with the error tag; a resumed run keeps its params (no 'Changing param values'
    error), and once it finishes its earlier interruption moves to previous_error."""
    cfg = compose(*path_overrides(tmp_path), "dataset=demo")
    with pytest.raises(KeyboardInterrupt):
        with tracking.training_run(cfg, "job", tags={"dataset": "demo"}) as run:
            run_id = run.id
            run.log_params(tracking.config_params(cfg))
            raise KeyboardInterrupt
    c = _client(tmp_path)
    r = c.get_run(run_id)
    assert r.info.status == "KILLED" and "interrupted" in r.data.tags["error"]
    assert r.info.run_name == "job" and r.data.tags["dataset"] == "demo"
    n = len(r.data.params)
    assert n > 30 and r.data.params["train.lr"] == "0.001" and not any(k.startswith("hydra") for k in r.data.params)

    cfg2 = compose(*path_overrides(tmp_path), "dataset=demo", "train.resume=false")
    with tracking.training_run(cfg2, "job", resume_id=run_id, tags={"resumed": "true"}) as run:  # same keys, one changed
        assert run.id == run_id and c.get_run(run_id).info.status == "RUNNING"
        run.log_params(tracking.config_params(cfg2))
        run.log_metrics({"loss": 0.5}, step=3)
    r = c.get_run(run_id)
    assert r.info.status == "FINISHED" and len(r.data.params) == n and r.data.params["train.resume"] == "True"
    assert "error" not in r.data.tags and "interrupted" in r.data.tags["previous_error"]
    assert r.data.tags["resumed"] == "true" and _steps(c, run_id, "loss") == [3]
    assert [x.info.status for x in _runs(tmp_path)] == ["FINISHED"]  # resumed: still one run


def test_a_run_ends_with_the_status_of_how_it_ended(tmp_path: Path, store: Path):
    cfg = compose(*path_overrides(tmp_path), "dataset=demo")
    ids = {}
    with pytest.raises(RuntimeError):
        with tracking.training_run(cfg, "error") as run:
            ids["error"] = run.id
            raise RuntimeError("disk full\nsecond line")
    for code in (0, 2):
        with pytest.raises(SystemExit):
            with tracking.training_run(cfg, f"exit{code}") as run:
                ids[f"exit{code}"] = run.id
                sys.exit(code)
    with tracking.training_run(cfg, "ok") as run:
        ids["ok"] = run.id
    c = _client(tmp_path)
    status = {k: c.get_run(v).info.status for k, v in ids.items()}
    assert status == {"error": "FAILED", "exit0": "FINISHED", "exit2": "FAILED", "ok": "FINISHED"}
    assert c.get_run(ids["error"]).data.tags["error"] == "RuntimeError: disk full"   # its first line
    assert c.get_run(ids["exit2"]).data.tags["error"] == "exit 2"
    assert "error" not in c.get_run(ids["ok"]).data.tags


def test_attach_adds_results_to_a_finished_run_without_changing_its_status(tmp_path: Path, store: Path):
    cfg = compose(*path_overrides(tmp_path), "dataset=demo")
    with tracking.training_run(cfg, "job") as run:
        run_id = run.id
        run.log_metrics({"loss": 0.7}, step=1)
    result = tmp_path / "result.json"
    result.write_text('{"val_log_loss": 0.25}')
    tracking.attach(cfg, run_id, metrics={"eval.val_log_loss": 0.25}, tags={"submission.rows": 12},
                    files={"evaluation": [result, tmp_path / "absent.json"]}, dicts={"extra/info.json": {"a": 1}})
    c = _client(tmp_path)
    r = c.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.metrics["eval.val_log_loss"] == 0.25 and r.data.metrics["loss"] == 0.7
    assert r.data.tags["submission.rows"] == "12"
    assert _artifacts(c, run_id) == {"evaluation/result.json", "extra/info.json"}   # a missing file is skipped
    info = Path(c.download_artifacts(run_id, "extra/info.json", str(tmp_path / "dl")))
    assert yaml.safe_load(info.read_text()) == {"a": 1}
    # after a FAILED run too: its status stays
    with pytest.raises(ValueError):
        with tracking.training_run(cfg, "failed") as run:
            failed = run.id
            raise ValueError("boom")
    tracking.attach(cfg, failed, tags={"note": "looked at"})
    assert c.get_run(failed).info.status == "FAILED" and c.get_run(failed).data.tags["note"] == "looked at"
    assert len(_runs(tmp_path)) == 2  # attach never makes a run

    with pytest.raises(UserError) as e:                                     # an id the store does not hold
        tracking.attach(cfg, "0" * 32, metrics={"x": 1.0})
    msg = str(e.value)
    assert "\n" not in msg and f"MLflow run {'0' * 32} is not in the store {tracking.tracking_uri(cfg)}" in msg
    assert "tracking.uri=" in msg


def test_attach_does_nothing_without_tracking_or_a_run(tmp_path: Path):
    off = compose(*path_overrides(tmp_path), "dataset=demo", "tracking.enabled=false")
    tracking.attach(off, "0" * 32, metrics={"x": 1.0}, files={"a": [tmp_path]})
    tracking.attach(compose(*path_overrides(tmp_path), "dataset=demo"), None, metrics={"x": 1.0})
    assert list(tmp_path.iterdir()) == []  # no store was even created
    with tracking.training_run(off, "job") as run:
        assert run.id is None
        run.log_params({"a": 1})
        run.log_metrics({"m": 1.0})
        run.set_tags({"t": "v"})
        run.log_files({None: [tmp_path]})
    assert list(tmp_path.iterdir()) == []


def _parent(cfg, c) -> str:
    client = tracking._client(cfg)
    return c.create_run(tracking._experiment_id(client, cfg), run_name="sweep").info.run_id


def test_failing_child_fails_its_parent(tmp_path: Path, store: Path, monkeypatch):
    cfg = compose(*path_overrides(tmp_path), "dataset=demo")
    c = _client(tmp_path)
    parent = _parent(cfg, c)
    monkeypatch.setenv(tracking.PARENT_ENV, parent)                          # what SweepParentRun sets
    with tracking.training_run(cfg, "ok"):
        pass
    assert c.get_run(parent).info.status == "RUNNING"                       # a finished child leaves it open
    with pytest.raises(ValueError):
        with tracking.training_run(cfg, "bad"):
            raise ValueError("boom")
    runs = {r.info.run_name: r for r in _runs(tmp_path)}
    assert runs["ok"].info.status == "FINISHED" and runs["bad"].info.status == "FAILED"
    assert runs["bad"].data.tags["error"] == "ValueError: boom"
    assert runs["bad"].data.tags["mlflow.parentRunId"] == parent == runs["ok"].data.tags["mlflow.parentRunId"]
    assert c.get_run(parent).info.status == "FAILED" and c.get_run(parent).data.tags["error"] == "job bad: ValueError: boom"

    other = _parent(cfg, c)                                                  # an interrupted child kills its parent
    monkeypatch.setenv(tracking.PARENT_ENV, other)
    with pytest.raises(KeyboardInterrupt):
        with tracking.training_run(cfg, "stopped"):
            raise KeyboardInterrupt("SIGTERM")
    assert c.get_run(other).info.status == "KILLED" and "interrupted (SIGTERM)" in c.get_run(other).data.tags["error"]
    # a resumed run is no new child: it keeps its own (or no) parent and never closes the sweep's
    resumed = next(r for r in _runs(tmp_path) if r.info.run_name == "ok").info.run_id
    third = _parent(cfg, c)
    monkeypatch.setenv(tracking.PARENT_ENV, third)
    with pytest.raises(ValueError):
        with tracking.training_run(cfg, "ok", resume_id=resumed):
            raise ValueError("again")
    assert c.get_run(third).info.status == "RUNNING" and c.get_run(resumed).info.status == "FAILED"


def test_disabled_tracking_creates_no_store(tmp_path: Path, data: Path):
    summary = pipeline.run(compose(*_ov(tmp_path, data, "tracking.enabled=false")), "train")
    assert summary["run_id"] is None and summary["tracking_uri"] is None
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    assert read_json(tmp_path / "models" / "demo" / "seed_cnn" / "run.json")["run_id"] is None


# ------------------------------------------------------------------ complete runs, linked stages
def test_two_runs_evaluate_predict_log_models_and_trace_the_csv(tmp_path: Path, store: Path, data: Path):
    a_ov = ["name=a", "train.epochs=2", "train.tta=true"]  # a's MLflow Model averages over flipped images too
    a = pipeline.run(compose(*_ov(tmp_path, data, *a_ov)), "train")
    b = pipeline.run(compose(*_ov(tmp_path, data, "name=b", "train.lr=3e-4", "train.optimizer=sgd")), "train")
    models = ["tracking.log_model=true", "tracking.register=true"]
    cfg_a = compose(*_ov(tmp_path, data, *a_ov, *models))
    evaluate.run(cfg_a)
    record = predict.run(cfg_a)
    evaluate.run(compose(*_ov(tmp_path, data, "name=b", "train.lr=3e-4", "train.optimizer=sgd", *models)))

    c = _client(tmp_path)
    runs = {r.info.run_name: r for r in _runs(tmp_path)}
    assert set(runs) == {"a", "b"} and {r.info.status for r in runs.values()} == {"FINISHED"}
    ra, rb = runs["a"], runs["b"]
    assert (ra.info.run_id, rb.info.run_id) == (a["run_id"], b["run_id"])
    assert ra.info.artifact_uri == (tmp_path / "mlruns").as_uri() + f"/{a['run_id']}/artifacts"

    # params: the composed config, namespaced, every key once; the overrides differ between the runs
    assert (ra.data.params["train.lr"], rb.data.params["train.lr"]) == ("0.001", "0.0003")
    assert (ra.data.params["train.optimizer"], rb.data.params["train.optimizer"]) == ("adam", "sgd")
    assert ra.data.params["train.epochs"] == "2" and ra.data.params["dataset.name"] == "demo"
    assert ra.data.params["model.name"] == "seed_cnn" and ra.data.params["dataset.image_size"] == "48"
    # tags: git, dataset fingerprint, what actually ran
    for r in (ra, rb):
        t = r.data.tags
        assert len(t["git.commit"]) == 40 or t["git.commit"] == "unknown"
        assert t["git.dirty"] in ("true", "false")
        assert t["runtime.precision"] == "float32" and t["runtime.device"] == "cpu"
        assert t["dataset"] == "demo" and t["model"] == "seed_cnn" and "hydra.overrides" in t
    assert ra.data.tags["dataset.fingerprint"] and ra.data.tags["dataset.fingerprint"] == rb.data.tags["dataset.fingerprint"]

    # per-epoch metric histories, one step per epoch; evaluate's metrics do not mix into them
    for key in EPOCH_METRICS:
        assert _steps(c, a["run_id"], key) == [1, 2], key
        assert _steps(c, b["run_id"], key) == [1], key
    assert ra.data.metrics["epochs_run"] == 2 and ra.data.metrics["best_epoch"] in (1, 2)
    assert ra.data.metrics["best_val_log_loss"] == pytest.approx(a["best_val_log_loss"])
    metrics = read_json(tmp_path / "metrics" / "demo" / "a.json")
    assert ra.data.metrics["eval.val_log_loss"] == pytest.approx(metrics["val_log_loss"])
    assert ra.data.metrics["eval.val_accuracy"] == pytest.approx(metrics["val_accuracy"])

    # artifacts: config, model, plots, evaluation, submission
    arts = _artifacts(c, a["run_id"])
    assert {"config.yaml", "history.json", "model/model.keras", "plots/learning_curve.png", "evaluation/a.json",
            "plots/roc.png", "plots/calibration.png", "plots/val_predictions.csv", "submission/demo-a.csv"} <= arts, arts
    assert {"plots/most_wrong.png", "plots/confused_pairs.png"} <= arts, arts  # error analysis as pictures
    assert {"config.yaml", "model/model.keras", "plots/learning_curve.png"} <= _artifacts(c, b["run_id"])
    logged_cfg = yaml.safe_load(Path(c.download_artifacts(b["run_id"], "config.yaml", str(tmp_path))).read_text())
    assert logged_cfg["train"]["lr"] == 3e-4 and logged_cfg["train"]["optimizer"] == "sgd"

    # the CSV on disk leads back to its run: sidecar .json, artifact content, and the sha256 tag
    csv = tmp_path / "submissions" / "demo-a.csv"
    assert record["run_id"] == a["run_id"] == read_json(csv.with_suffix(".json"))["run_id"]
    logged_csv = Path(c.download_artifacts(a["run_id"], "submission/demo-a.csv", str(tmp_path / "dl")))
    assert logged_csv.read_bytes() == csv.read_bytes()
    assert tracking.run_for_file(cfg_a, csv).info.run_id == a["run_id"]
    csv.with_suffix(".json").unlink()
    assert tracking.run_for_file(cfg_a, csv).info.run_id == a["run_id"]             # by content alone
    _check_mlflow_models(c, tmp_path, data, csv, {"a": a["run_id"], "b": b["run_id"]})


def _check_mlflow_models(c, base: Path, data: Path, csv: Path, runs: dict[str, str]) -> None:
    """Each evaluated run has one MLflow Model that loads with mlflow.pyfunc and predicts the probabilities its
    CSV holds; both are versions of kagglepipe-demo, the alias best on the lower validation log loss; the
    experiment opens in the UI's model-training view."""
    import mlflow
    import numpy as np
    import pandas as pd

    (exp,) = [e for e in c.search_experiments() if e.name == "kagglepipe-demo"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    logged = {m.source_run_id: m for m in c.search_logged_models([exp.experiment_id])}
    assert set(logged) == set(runs.values())
    mlflow.set_tracking_uri(f"sqlite:///{base}/mlflow.db")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{logged[runs['a']].model_id}")
        assert [str(s) for s in model.metadata.get_input_schema().inputs] == ["Tensor('uint8', (-1, 48, 48, 3))"]
        assert model.metadata.get_output_schema().input_names() == ["p_cat", "p_dog"]
        assert np.asarray(model.input_example).shape == (2, 48, 48, 3)
        test = pd.read_csv(data / "processed" / "demo" / "test.csv")
        images = np.load(data / "processed" / "demo" / "test.npy")[test["index"].to_numpy()]
        out = model.predict(images)
        submitted = pd.read_csv(csv).set_index("id").loc[test["id"], "label"].to_numpy()
        np.testing.assert_allclose(out["p_dog"].to_numpy(), submitted, rtol=1e-6)      # what src.predict wrote
        np.testing.assert_allclose(out.sum(axis=1), 1.0)
        versions = {v.run_id: v for v in c.search_model_versions("name = 'kagglepipe-demo'")}
        assert set(versions) == set(runs.values())
        losses = {r: float(v.tags["val_log_loss"]) for r, v in versions.items()}
        best = c.get_model_version_by_alias("kagglepipe-demo", "best")
        assert best.run_id == min(losses, key=losses.get)
        assert mlflow.pyfunc.load_model("models:/kagglepipe-demo@best").metadata.run_id == best.run_id
    finally:
        mlflow.set_tracking_uri(None)


def test_multiclass_run_logs_a_confusion_matrix(tmp_path: Path, store: Path):
    classes = ["red", "green", "blue"]
    three_class(tmp_path / "raw" / "tri", classes)
    ov = [*path_overrides(tmp_path), "dataset=cifar10", "model=seed_cnn", "augment=none", "dataset.name=tri",
          f"dataset.raw_dir={tmp_path}/raw/tri", f"dataset.classes=[{','.join(classes)}]", "dataset.image_size=48",
          "dataset.val_fraction=0.3", "train.epochs=1", "train.batch_size=16", "prepare.workers=1"]
    s = pipeline.run(compose(*ov), "train")
    evaluate.run(compose(*ov, "tracking.log_model=true", "evaluate.temperature=auto"))
    c = _client(tmp_path)
    r = c.get_run(s["run_id"])
    assert r.info.status == "FINISHED" and r.data.params["dataset.classes"] == str(classes)
    assert {"plots/confusion_matrix.png", "plots/confusion_matrix.json", "plots/learning_curve.png"} <= _artifacts(c, s["run_id"])
    assert {"plots/most_wrong.png", "plots/confused_pairs.png"} <= _artifacts(c, s["run_id"])
    assert _steps(c, s["run_id"], "val_accuracy") == [1]

    # its MLflow Model gives the finalized probabilities evaluate scored (softmax temperature, clip), a column a class
    import mlflow
    import numpy as np
    import pandas as pd

    (logged,) = c.search_logged_models([r.info.experiment_id])
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    scored = pd.read_csv(tmp_path / "plots" / "tri" / "seed_cnn" / "val_predictions.csv", dtype={"id": str})
    rows = pd.read_csv(tmp_path / "processed" / "tri" / "train.csv", dtype={"id": str}).set_index("id").loc[scored["id"]]
    out = model.predict(np.load(tmp_path / "processed" / "tri" / "train.npy")[rows["index"].to_numpy()])
    assert list(out.columns) == [f"p_{k}" for k in classes]
    np.testing.assert_allclose(out.to_numpy(), scored[[f"p_{k}" for k in classes]].to_numpy(), rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ failures
def test_failure_after_the_run_started_ends_failed(tmp_path: Path, store: Path, data: Path):
    with pytest.raises(UserError, match="model.weights"):
        pipeline.run(compose(*_ov(tmp_path, data, f"model.weights={tmp_path}/missing.weights.h5")), "train")
    (r,) = _runs(tmp_path)
    assert r.info.status == "FAILED" and r.data.tags["error"].startswith("UserError: model.weights=")
    assert r.data.params["model.weights"].endswith("missing.weights.h5")   # the config was logged before it failed


# ------------------------------------------------------------------ sweeps through the CLI
def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("KAGGLEPIPE_MLFLOW_PARENT_RUN", None)
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def test_sweep_from_another_directory_groups_jobs_under_a_parent(tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    p = _cli(elsewhere, "-m", *TINY, *path_overrides(tmp_path), f"hydra.sweep.dir={tmp_path}/multirun",
             "train.lr=1e-3,3e-4")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert not [n for n in NOISE if n in out], out                     # MLflow's own logging stays quiet
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "mlruns").exists()

    c = _client(tmp_path)
    runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]   # the Hydra callback fired once
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: r.info.run_name)
    assert len(runs) == 3 and [r.info.run_name for r in children] == ["seed_cnn-0", "seed_cnn-1"]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.jobs"] == "2"
    assert "train.lr=1e-3,3e-4" in parent.data.tags["hydra.overrides"]
    for r, lr in zip(children, ("0.001", "0.0003")):
        assert r.info.status == "FINISHED" and r.data.params["train.lr"] == lr
        assert f"train.lr={lr}" in r.data.tags["hydra.overrides"] and "dataset=demo" in r.data.tags["hydra.overrides"]
        assert r.data.tags["dataset.fingerprint"] and r.data.tags["runtime.precision"] == "float32"
        assert all(_steps(c, r.info.run_id, k) == [1] for k in EPOCH_METRICS)
        assert {"config.yaml", "model/model.keras", "plots/learning_curve.png"} <= _artifacts(c, r.info.run_id)
        assert (tmp_path / "models" / "demo" / r.info.run_name / "model.keras").is_file()   # distinct outputs


def test_sweep_job_failing_before_its_run_fails_the_parent(tmp_path: Path, store: Path):
    """The job's UserError exits the sweep (status 2) before on_multirun_end; the parent is still closed FAILED.

    (A job failing inside its run fails the parent at once: test_failing_child_fails_its_parent.)
    """
    p = _cli(tmp_path / "cwd", "-m", *TINY, *path_overrides(tmp_path), f"hydra.sweep.dir={tmp_path}/multirun",
             "train.lr=-1,1e-3")
    assert p.returncode == 2 and "error: config error: train.lr=-1" in p.stderr, p.stderr[-3000:]
    (parent,) = _runs(tmp_path)                                   # the first job never started a run
    assert parent.data.tags["sweep"] == "parent" and parent.info.status == "FAILED" and parent.data.tags["error"]
