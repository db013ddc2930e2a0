"""MLflow tracking: one store for the whole project, one run per training run, sweeps grouped under a parent.

Store: `tracking.uri` if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db with
artifacts under <project root>/mlruns, whatever the working directory (a relative sqlite path in tracking.uri
is relative to the project root too). `tracking.enabled=false` turns it off: nothing is imported or created.
Evaluate and predict log into the training run they used (its id is in models/<dataset>/<name>/run.json);
a submission CSV leads back to that run through its .json sidecar or its sha256 tag (`run_for_file`).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from .common import PROJECT_ROOT, UserError, read_json

PARENT_ENV = "KAGGLEPIPE_MLFLOW_PARENT_RUN"
_MAX_PARAM = 6000


def default_uri() -> str:
    """The project's own store: <project root>/mlflow.db, the same from any working directory."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri(cfg: DictConfig) -> str:
    """tracking.uri (a relative sqlite path is rooted at the project) > $MLFLOW_TRACKING_URI > default_uri()."""
    uri = cfg.tracking.get("uri")
    if uri:
        uri = str(uri)
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
            uri = f"sqlite:///{PROJECT_ROOT / uri[len('sqlite:///'):]}"
        return uri
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def enabled(cfg: DictConfig) -> bool:
    return bool(cfg.tracking.get("enabled", True))


def _quiet_mlflow_logs() -> None:
    """MLflow's own chatter (schema creation, alembic migrations, 'View run' lines) stays below WARNING."""
    import logging

    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils", "mlflow.tracking.fluent",
                 "mlflow.tracking._tracking_service.client", "mlflow.store.sqlalchemy_store"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:" else None


def _open_store(mlflow: Any, uri: str, name: str):
    """get_experiment_by_name, upgrading a sqlite store left by an older MLflow (after a backup copy)."""
    try:
        return mlflow.get_experiment_by_name(name)
    except Exception as e:  # an unusable store: say which and how to fix it, not a traceback
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". Take a backup")[0][:300]
        db = _sqlite_file(uri)
        if db is not None and db.is_file() and "out-of-date database schema" in str(e):
            backup = db.with_name(f"{db.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.copy2(db, backup)
            print(f"tracking: {db} has an older MLflow schema; upgrading it (backup: {backup})")
            try:
                import sqlalchemy
                from mlflow.store.db.utils import _upgrade_db

                engine = sqlalchemy.create_engine(uri)
                try:
                    _upgrade_db(engine)
                finally:
                    engine.dispose()
                return mlflow.get_experiment_by_name(name)
            except Exception as e2:
                first = (f"{first}; the automatic upgrade failed: {(str(e2).splitlines() or [''])[0][:200]}; "
                         f"the database before it is in {backup}")
        raise UserError(f"MLflow store {uri} cannot be used ({first}); back it up and run "
                        f"`mlflow db upgrade {uri}`, or point tracking.uri elsewhere (or tracking.enabled=false)") from e


def _client_setup(cfg: DictConfig):
    import mlflow

    _quiet_mlflow_logs()
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    name = str(cfg.tracking.experiment)
    exp = _open_store(mlflow, uri, name)
    if exp is None:
        location = None
        if _sqlite_file(uri) is not None:  # artifacts beside the database, never in the working directory
            location = (_sqlite_file(uri).resolve().parent / "mlruns").as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by a concurrent job
            pass
    mlflow.set_experiment(name)
    return mlflow


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and any(isinstance(v, (dict, list)) for v in d):
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = d
    return out


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The composed config as namespaced params ("train.lr", "dataset.name", ...): each key once."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return {k: str(v)[:_MAX_PARAM] for k, v in flatten(container).items()}


def git_info() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False
    return {"git.commit": commit or "unknown", "git.dirty": str(dirty).lower()}


def hydra_overrides() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(HydraConfig.get().overrides.task)
    except Exception:
        return ""


@contextlib.contextmanager
def run(cfg: DictConfig, run_name: str, run_id: str | None = None, tags: dict[str, str] | None = None,
        nested_parent: str | None = None) -> Iterator[Any]:
    """Start (or reopen, with run_id) an MLflow run; end it FINISHED, FAILED (with the error as a tag) or KILLED.

    Yields the mlflow module with the run active, or None when tracking is disabled. A new run inside a sweep
    is a child of the sweep's parent run, and its failure (or interruption) fails (or kills) the parent.
    Reopening a FINISHED run (evaluate, predict, kaggle logging into the training run) never turns it FAILED:
    an error there is recorded as the tag `stage_error` and the run stays FINISHED.
    """
    if not enabled(cfg):
        yield None
        return
    mlflow = _client_setup(cfg)
    parent = None if run_id else (nested_parent or os.environ.get(PARENT_ENV))
    all_tags = {**(tags or {})}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    previous = None
    if run_id:
        try:
            previous = mlflow.MlflowClient().get_run(run_id)
        except Exception as e:
            raise UserError(f"MLflow run {run_id} is not in the store {tracking_uri(cfg)}; use the store it was "
                            f"recorded in (tracking.uri=..., see tracking_uri in the run.json beside the model)") from e
    was_finished = previous is not None and previous.info.status == "FINISHED"
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=all_tags or None)

    def close(status: str, error: str | None) -> None:
        client = mlflow.MlflowClient()
        if error is not None:
            try:
                client.set_tag(active.info.run_id, "stage_error" if was_finished else "error", error[:5000])
            except Exception:
                pass
        if was_finished and status != "FINISHED":
            status = "FINISHED"  # a later stage's failure does not undo a completed training run
        mlflow.end_run(status=status)
        if parent and status != "FINISHED":  # a failed job fails its sweep: the parent must not stay RUNNING
            try:
                client.set_terminated(parent, status=status)
                client.set_tag(parent, "error", f"job {run_name}: {error}"[:5000])
            except Exception:
                pass

    try:
        yield mlflow
    except KeyboardInterrupt as e:
        close("KILLED", f"interrupted ({e or 'KeyboardInterrupt'})")
        raise
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            close("FINISHED", None)
            raise
        msg = f"exit {e.code}" if isinstance(e, SystemExit) else (f"{type(e).__name__}: {e}".splitlines() or [""])[0]
        close("FAILED", msg)
        raise
    else:
        if mlflow.active_run() and mlflow.active_run().info.run_id == active.info.run_id:
            if previous is not None and previous.data.tags.get("error") and not was_finished:
                # a resumed run that completes: its earlier interruption is history, not its state
                mlflow.MlflowClient().set_tag(active.info.run_id, "previous_error", previous.data.tags["error"])
                mlflow.MlflowClient().delete_tag(active.info.run_id, "error")
            mlflow.end_run(status="FINISHED")


def log_params_once(mlflow: Any, params: dict[str, Any]) -> None:
    """Log params that the run does not hold yet (a resumed run must not log a key twice)."""
    existing = mlflow.get_run(mlflow.active_run().info.run_id).data.params
    new = {k: v for k, v in params.items() if k not in existing}
    items = list(new.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))


def log_artifact(mlflow: Any, path: str | Path, artifact_path: str | None = None) -> None:
    if mlflow is not None and Path(path).exists():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


# ------------------------------------------------------------------ sweeps: one parent run per -m
try:
    from hydra.experimental.callback import Callback
except Exception:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


def _children(client: Any, parent: str) -> list[Any]:
    """Every run whose mlflow.parentRunId is `parent`, in any experiment (a sweep may span datasets)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000) if ids else []


def _close_parent(uri: str, parent: str, aborted: bool) -> None:
    """End a sweep's parent run from its children: FINISHED only if the sweep ran to its end and all of them did."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if client.get_run(parent).info.status not in ("RUNNING", "SCHEDULED") and aborted:
        return  # already closed (a failed or interrupted job closes it at once)
    children = _children(client, parent)
    bad = [c for c in children if c.info.status != "FINISHED"]
    client.set_tag(parent, "sweep.jobs", str(len(children)))
    if aborted or bad:
        status = "KILLED" if any(c.info.status == "KILLED" for c in bad) else "FAILED"
        if aborted and not bad:
            client.set_tag(parent, "error", "the sweep stopped before its end (a job failed before its run started)")
        client.set_terminated(parent, status=status)
    else:
        client.set_terminated(parent, status="FINISHED")


def _close_parent_at_exit(uri: str, parent: str) -> None:
    """The process ends with the sweep's parent still open: a job's SystemExit/exception skipped on_multirun_end."""
    if os.environ.get(PARENT_ENV) != parent:
        return  # on_multirun_end closed it
    try:
        _close_parent(uri, parent, aborted=True)
    except Exception as e:  # pragma: no cover - nothing left to report to but stderr
        print(f"tracking: warning: could not close the sweep's MLflow run {parent}: {e}")


class SweepParentRun(Callback):  # type: ignore[misc]
    """Hydra callback: `-m` sweeps get one MLflow parent run; every job's run is its child.

    The parent ends FINISHED when every job's run did; FAILED (or KILLED) as soon as one job fails (or is
    interrupted), and also when the sweep stops early without reaching on_multirun_end (checked at exit).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not enabled(config):
            return
        from mlflow.tracking import MlflowClient

        mlflow = _client_setup(config)
        exp = mlflow.get_experiment_by_name(str(config.tracking.experiment))
        # Created, not started: it stays RUNNING while the jobs attach to it as children; on_multirun_end closes it.
        r = MlflowClient().create_run(exp.experiment_id, run_name=f"sweep-{config.name}",
                                      tags={"sweep": "parent", "hydra.overrides": " ".join(config.hydra.overrides.task),
                                            "dataset": str(config.dataset.name), "model": str(config.model.name),
                                            **git_info()})
        os.environ[PARENT_ENV] = r.info.run_id
        atexit.register(_close_parent_at_exit, tracking_uri(config), r.info.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.get(PARENT_ENV)
        if not parent or not enabled(config):
            return
        _close_parent(tracking_uri(config), parent, aborted=False)
        os.environ.pop(PARENT_ENV, None)


# ------------------------------------------------------------------ tracing an output back to its run
def run_for_file(cfg: DictConfig, path: str | Path) -> Any:
    """The MLflow run that produced a submission CSV: from its .json sidecar, else by the CSV's sha256 tag."""
    from mlflow.tracking import MlflowClient

    from .common import file_sha256

    path = Path(path)
    _client_setup(cfg)
    client = MlflowClient()
    sidecar = path.with_suffix(".json")
    if sidecar.is_file() and read_json(sidecar).get("run_id"):
        return client.get_run(read_json(sidecar)["run_id"])
    digest = file_sha256(path)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.`submission.sha256` = '{digest}'", max_results=1) if ids else []
    if not runs:
        raise UserError(f"{path}: no MLflow run in {tracking_uri(cfg)} holds a submission with this content")
    return runs[0]
