"""MLflow tracking: one store for the whole project, one run per training run, sweeps grouped under a parent.

Store: `tracking.uri` if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db with
artifacts under <project root>/mlruns, whatever the working directory. `tracking.enabled=false` turns it off.
Evaluate and predict log into the training run they used (its id is in models/<dataset>/<name>/run.json).
"""
from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from .common import PROJECT_ROOT

PARENT_ENV = "KAGGLEPIPE_MLFLOW_PARENT_RUN"
_MAX_PARAM = 6000


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def enabled(cfg: DictConfig) -> bool:
    return bool(cfg.tracking.get("enabled", True))


def _client_setup(cfg: DictConfig):
    import logging

    import mlflow

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    name = str(cfg.tracking.experiment)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):  # artifacts beside the database, never in the working directory
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlruns").as_uri()
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
    """Start (or resume, with run_id) an MLflow run; end it FINISHED, FAILED (with the error as a tag) or KILLED.

    Yields the mlflow module with the run active, or None when tracking is disabled.
    """
    if not enabled(cfg):
        yield None
        return
    mlflow = _client_setup(cfg)
    parent = nested_parent or os.environ.get(PARENT_ENV)
    all_tags = {**(tags or {})}
    if parent and not run_id:
        all_tags["mlflow.parentRunId"] = parent
    active = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=all_tags or None)
    try:
        yield mlflow
    except KeyboardInterrupt:
        mlflow.set_tag("error", "interrupted (KeyboardInterrupt/SIGTERM)")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            mlflow.end_run(status="FINISHED")
            raise
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:4000] if not isinstance(e, SystemExit) else f"exit {e.code}"
        mlflow.set_tag("error", msg)
        mlflow.end_run(status="FAILED")
        if parent and not run_id:  # a failed job fails its sweep: the parent must not stay RUNNING
            mlflow.MlflowClient().set_terminated(parent, status="FAILED")
        raise
    else:
        if mlflow.active_run() and mlflow.active_run().info.run_id == active.info.run_id:
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


class SweepParentRun(Callback):  # type: ignore[misc]
    """Hydra callback: `-m` sweeps get one MLflow parent run; every job's run is its child."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not enabled(config):
            return
        from mlflow.tracking import MlflowClient

        mlflow = _client_setup(config)
        exp = mlflow.get_experiment_by_name(str(config.tracking.experiment))
        # Created, not started: it stays RUNNING while the jobs attach to it as children; on_multirun_end closes it.
        r = MlflowClient().create_run(exp.experiment_id, run_name=f"sweep-{config.name}",
                                      tags={"sweep": "parent", "hydra.overrides": " ".join(config.hydra.overrides.task)})
        os.environ[PARENT_ENV] = r.info.run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.pop(PARENT_ENV, None)
        if not parent or not enabled(config):
            return
        from mlflow.tracking import MlflowClient

        _client_setup(config)
        client = MlflowClient()
        children = client.search_runs([client.get_run(parent).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        failed = any(c.info.status != "FINISHED" for c in children)
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
