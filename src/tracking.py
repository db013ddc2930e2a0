"""MLflow: one store for the whole project, one run per training run, sweeps grouped under a parent.

Stage code uses two functions and nothing else of MLflow:
  training_run(cfg, name, resume_id, tags)   open (or resume) the training run; yields a Run to log into
  attach(cfg, run_id, metrics, tags, files)  add evaluate's, predict's or Kaggle's results to a finished run
With tracking.enabled=false both do nothing (no store is created, nothing is imported).

Store: `tracking.uri` if set, else $MLFLOW_TRACKING_URI, else sqlite:///<project root>/mlflow.db with artifacts
under <project root>/mlruns, whatever the working directory (a relative sqlite path in tracking.uri is relative to
the project root too). A submission CSV leads back to its run through its .json record or its sha256 tag
(run_for_file).

Several processes at once (a parallel sweep, folds on several hosts): a tracking server (tracking.uri=http://...)
is checked once before a stage starts (unreachable or answering with an error: one line, nothing started); the
default SQLite file is opened in WAL mode with a busy timeout, so jobs on one machine write to it at once, and a
sweep whose jobs run on other hosts (SLURM) is refused unless it tracks to a server. A sweep's parent run id
reaches its jobs through $KAGGLEPIPE_MLFLOW_PARENT_RUN and, for jobs started without this process's
environment, a file in the sweep folder (SweepParentRun).
"""
from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from .errors import UserError
from .files import file_sha256, read_json, write_json
from .paths import PROJECT_ROOT

PARENT_ENV = "KAGGLEPIPE_MLFLOW_PARENT_RUN"  # set while a Hydra sweep runs: its parent run's id
_TOLERANT_PARENTS: set[str] = set()  # parents a failed child leaves open (a search: a failed trial is one result)
_MAX_PARAM = 6000


def default_uri() -> str:
    """The project's own store: <project root>/mlflow.db, the same from any working directory."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def tracking_uri(cfg: DictConfig) -> str:
    """tracking.uri (a relative sqlite path is rooted at the project) > $MLFLOW_TRACKING_URI > default_uri()."""
    uri = cfg.tracking.get("uri")
    if uri:
        return rooted(str(uri))
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def rooted(uri: str) -> str:
    """A database URI with a relative sqlite path taken from the project root (also Optuna's search.storage)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and uri != "sqlite:///:memory:":
        return f"sqlite:///{PROJECT_ROOT / uri[len('sqlite:///'):]}"
    return uri


def store_folder(cfg: DictConfig) -> Path:
    """The folder of the sqlite MLflow store (the project root for any other store): Optuna's study goes there."""
    db = _sqlite_file(tracking_uri(cfg))
    return db.resolve().parent if db is not None else PROJECT_ROOT


def enabled(cfg: DictConfig) -> bool:
    return bool(cfg.tracking.enabled)


def has_runs(cfg: DictConfig) -> bool:
    """Tracking is on and its store exists (a sqlite file not there yet holds no run to add results to)."""
    db = _sqlite_file(tracking_uri(cfg))
    return enabled(cfg) and (db is None or db.is_file())


# ------------------------------------------------------------------ a run to log into
class Run:
    """An open MLflow run, or (tracking off) one that records nothing: stage code never checks which."""

    def __init__(self, client: Any = None, run_id: str | None = None, parent: str | None = None, name: str = ""):
        self.client, self.id, self.parent, self.name = client, run_id, parent, name

    def fail(self, error: str) -> None:
        """End the run FAILED from outside its block (a multi-process job stopping because another process died)."""
        if self.client is not None:
            _close(self.client, self.id, self.parent, "FAILED", error, self.name)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log the params the run does not hold yet (a resumed run must not log a key twice)."""
        if self.client is None:
            return
        from mlflow.entities import Param

        held = self.client.get_run(self.id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in held]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(self.id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.client is not None:
            from mlflow.entities import RunTag

            self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_files(self, files: dict[str | None, list[Path]]) -> None:
        """Artifacts: {folder in the run (None: its top): [local files]}; files that do not exist are skipped."""
        if self.client is not None:
            for folder, paths in files.items():
                for p in paths:
                    if Path(p).is_file():
                        self.client.log_artifact(self.id, str(p), folder)


@contextlib.contextmanager
def training_run(cfg: DictConfig, name: str, resume_id: str | None = None,
                 tags: dict[str, str] | None = None) -> Iterator[Run]:
    """Start (or resume, with resume_id) the training run; end it FINISHED, FAILED (the error as the tag `error`)
    or KILLED (Ctrl-C, SIGTERM). Inside a sweep a new run is a child of the sweep's parent, and its failure (or
    interruption) fails (or kills) the parent at once."""
    if not enabled(cfg):
        yield Run()
        return
    client = _client(cfg)
    parent = None if resume_id else os.environ.get(PARENT_ENV)
    if resume_id:
        previous = _existing_run(client, resume_id, cfg)
        client.update_run(resume_id, status="RUNNING")
        run = Run(client, resume_id, parent, name)
        run.set_tags(tags or {})
    else:
        previous = None
        all_tags = {**_context_tags(), **(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
        run = Run(client, client.create_run(_experiment_id(client, cfg), run_name=name, tags=all_tags).info.run_id,
                  parent, name)
    try:
        yield run
    except KeyboardInterrupt as e:
        _close(client, run.id, parent, "KILLED", f"interrupted ({e or 'KeyboardInterrupt'})", name)
        raise
    except BaseException as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            client.set_terminated(run.id, "FINISHED")
            raise
        error = f"exit {e.code}" if isinstance(e, SystemExit) else (f"{type(e).__name__}: {e}".splitlines() or [""])[0]
        _close(client, run.id, parent, "FAILED", error, name)
        if _store_failed(e):
            raise UserError(f"the MLflow store {tracking_uri(cfg)} failed during run {run.id} ({error[:200]}); what "
                            "finished is checkpointed: rerun the same command once the store is back") from e
        raise
    if previous is not None and previous.data.tags.get("error"):
        # a resumed run that completes: its earlier interruption is history, not its state
        client.set_tag(run.id, "previous_error", previous.data.tags["error"])
        client.delete_tag(run.id, "error")
    client.set_terminated(run.id, "FINISHED")


def _context_tags() -> dict[str, str]:
    """The tags MLflow's own start_run adds (user, source, ...), which MlflowClient.create_run leaves out."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return dict(resolve_tags())
    except Exception:  # an internal module: without it the run merely lacks these tags
        return {}


def _close(client: Any, run_id: str, parent: str | None, status: str, error: str, name: str) -> None:
    """End a run that failed or was interrupted, and its sweep's parent with it (unless already ended by another
    job). Closing must never hide the error that ended the run (nor fail on a store that is gone)."""
    with contextlib.suppress(Exception):
        client.set_tag(run_id, "error", error[:5000])
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, status)
    if parent and parent not in _TOLERANT_PARENTS:  # a failed job fails its sweep: the parent must not stay RUNNING
        with contextlib.suppress(Exception):
            if client.get_run(parent).info.status in ("RUNNING", "SCHEDULED"):
                client.set_terminated(parent, status)
                client.set_tag(parent, "error", f"job {name}: {error}"[:5000])


def _store_failed(e: BaseException) -> bool:
    """The store itself failed (a server gone, a database locked for too long), not the training."""
    from mlflow.exceptions import MlflowException

    import requests

    return isinstance(e, (MlflowException, requests.exceptions.RequestException)) and not isinstance(e, UserError)


@contextlib.contextmanager
def parent_run(cfg: DictConfig, name: str, resume_id: str | None = None,
               tags: dict[str, str] | None = None, failed_children_fail_it: bool = True) -> Iterator[Run]:
    """A run whose runs opened inside the block are its children: a cross-validated member's parent, with one
    child per fold. Ends like training_run (a failed or interrupted fold fails or kills it; with
    failed_children_fail_it=False, as for a search's trials, a failed child leaves it running)."""
    with training_run(cfg, name, resume_id, tags) as run:
        previous = os.environ.get(PARENT_ENV)
        if run.id:
            os.environ[PARENT_ENV] = run.id
            if not failed_children_fail_it:
                _TOLERANT_PARENTS.add(run.id)
        try:
            yield run
        finally:
            _TOLERANT_PARENTS.discard(run.id)
            if previous is None:
                os.environ.pop(PARENT_ENV, None)
            else:
                os.environ[PARENT_ENV] = previous


def adopt(cfg: DictConfig, name: str, children: list[str | None], tags: dict[str, str] | None = None) -> str | None:
    """A FINISHED parent run for runs trained apart (cross-validation folds trained one per command or host):
    their common parent if they have one, else a new run made theirs. None with tracking off."""
    ids = [c for c in children if c]
    if not enabled(cfg) or not ids:
        return None
    client = _client(cfg)
    parents = {_existing_run(client, c, cfg).data.tags.get("mlflow.parentRunId") for c in ids}
    if len(parents) == 1 and None not in parents:
        return parents.pop()
    run_id = client.create_run(_experiment_id(client, cfg), run_name=name, tags={**_context_tags(), **(tags or {})}).info.run_id
    for c in ids:
        client.set_tag(c, "mlflow.parentRunId", run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def member_of_run(cfg: DictConfig, run_id: str) -> str:
    """The member name an MLflow run belongs to (a fold's, a member's or a single model's run)."""
    if not enabled(cfg):
        raise UserError(f"blend member {run_id} looks like an MLflow run id, but tracking is off; name the member")
    run = _existing_run(_client(cfg), run_id, cfg)
    dataset = run.data.tags.get("dataset")
    if dataset and dataset != str(cfg.dataset.name):
        raise UserError(f"blend member {run_id}: that MLflow run is on dataset {dataset}, not {cfg.dataset.name}; "
                        "blend members of one dataset")
    return run.data.tags.get("member") or run.info.run_name


def attach(cfg: DictConfig, run_id: str | None, *, metrics: dict[str, float] | None = None,
           tags: dict[str, Any] | None = None, files: dict[str | None, list[Path]] | None = None,
           dicts: dict[str, Any] | None = None) -> None:
    """Add results to an existing (finished) run: metrics, tags, files as artifacts, dicts as JSON artifacts
    ({artifact file: object}). Its status stays as it is. No-op with tracking off or no run id."""
    if not enabled(cfg) or not run_id:
        return
    client = _client(cfg)
    _existing_run(client, run_id, cfg)
    run = Run(client, run_id)
    run.log_metrics(metrics or {})
    run.set_tags(tags or {})
    run.log_files(files or {})
    for artifact_file, obj in (dicts or {}).items():
        client.log_dict(run_id, obj, artifact_file)


def end_run(cfg: DictConfig, run_id: str | None, status: str, tags: dict[str, Any] | None = None) -> None:
    """Give a run (a search's trial) its final status and tags: KILLED for a pruned trial, which trained
    cleanly to the epoch it was stopped at. No-op with tracking off or no run id."""
    if not enabled(cfg) or not run_id:
        return
    client = _client(cfg)
    Run(client, run_id).set_tags(tags or {})
    client.set_terminated(run_id, status)


def close_orphans(cfg: DictConfig, parent: str | None, keep: set[str], error: str, done_tag: str) -> int:
    """The children of `parent` that a stopped process left RUNNING or KILLED without the tag `done_tag` (which
    the parent's own code gives the runs it ended): those in `keep` (runs a rerun resumes) end KILLED with the tag
    `error`; the others hold no finished epoch and are deleted (MLflow's soft delete), so a rerun's fresh run is
    the only one of its name. Returns how many were deleted."""
    if not enabled(cfg) or not parent:
        return 0
    client = _client(cfg)
    stale = [c for c in _children(client, parent)
             if c.info.status in ("RUNNING", "KILLED") and done_tag not in c.data.tags]
    for child in stale:
        if child.info.run_id in keep:
            client.set_tag(child.info.run_id, "error", error)
            client.set_terminated(child.info.run_id, "KILLED")
        else:
            client.delete_run(child.info.run_id)
    return sum(c.info.run_id not in keep for c in stale)


def _existing_run(client: Any, run_id: str, cfg: DictConfig) -> Any:
    try:
        return client.get_run(run_id)
    except Exception as e:
        raise UserError(f"MLflow run {run_id} is not in the store {tracking_uri(cfg)}; use the store it was recorded "
                        "in (tracking.uri=..., see tracking_uri in the run.json beside the model)") from e


# ------------------------------------------------------------------ a member as an MLflow Model
ALIAS = "best"  # the registered version with the best validation (or OOF) score


def log_model(cfg: DictConfig, run_id: str | None, name: str, model_files: list[Path], settings: dict[str, Any],
              example: Any, scores: dict[str, float]) -> str | None:
    """Log a member's Keras model file(s) as one MLflow Model on its run (src/mlflow_model.py: uint8 images in,
    the submitted probabilities out; settings: its classes, tta, average, temperature, clip), with an input
    signature and `example` (a few images); with tracking.register, register it and move the alias `best`.
    Returns the model's URI; None with tracking or tracking.log_model off."""
    if not (enabled(cfg) and run_id and cfg.tracking.log_model):
        return None
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    client = _client(cfg)
    run = _existing_run(client, run_id, cfg)
    signature = ModelSignature(inputs=Schema([TensorSpec(example.dtype, (-1, *example.shape[1:]))]),
                               outputs=Schema([ColSpec("double", f"p_{c}") for c in settings["classes"]]))
    with _fluent_uri(cfg, run.info.experiment_id), tempfile.TemporaryDirectory() as tmp:
        artifacts = {"settings": Path(tmp) / "settings.json"}
        artifacts["settings"].write_text(json.dumps(settings, indent=1))
        for i, p in enumerate(model_files):  # folds' files share a name: each goes in under its own (links are refused)
            artifacts[f"model-{i}"] = Path(tmp) / f"model-{i}.keras"
            shutil.copyfile(p, artifacts[f"model-{i}"])
        info = Model.log(
            artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
            artifacts={k: str(v) for k, v in artifacts.items()},
            python_model=str(PROJECT_ROOT / "src" / "mlflow_model.py"), code_paths=[str(PROJECT_ROOT / "src")],
            signature=signature, input_example=example, pip_requirements=_model_requirements(),
            tags={k: str(v) for k, v in scores.items()})
        if cfg.tracking.register:
            _register(cfg, client, info.model_id, run_id, scores)
    return info.model_uri


def _register(cfg: DictConfig, client: Any, model_id: str, run_id: str, scores: dict[str, float]) -> None:
    """A new version of tracking.registered_model; the alias `best` moves to the version with the best score."""
    import mlflow

    name = str(cfg.tracking.registered_model)
    with contextlib.redirect_stderr(io.StringIO()):  # its "Successfully registered ..." lines: ours says it all
        version = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in scores.items()})
    versions = client.search_model_versions(f"name = '{name}'")
    best = min((v for v in versions if "val_log_loss" in v.tags), key=lambda v: _rank(v.tags, str(cfg.dataset.metric)))
    client.set_registered_model_alias(name, ALIAS, best.version)
    print(f"tracking: registered {name} version {version.version} (run {run_id}); alias {ALIAS} -> version "
          f"{best.version}")


def _rank(tags: dict[str, str], metric: str) -> tuple[float, float]:
    """Smaller is better: log loss (then accuracy), or accuracy (then log loss) for an accuracy competition."""
    loss, acc = float(tags["val_log_loss"]), float(tags.get("val_accuracy", "nan"))
    return (-acc, loss) if metric == "accuracy" else (loss, -acc)


def _model_requirements() -> list[str]:
    """The packages a logged model needs to load and predict, at this environment's versions (given, not
    inferred: MLflow's inference would load the model in a subprocess at every evaluate)."""
    from importlib.metadata import PackageNotFoundError, version

    backend = {"jax": ["jax"], "torch": ["torch"]}.get(os.environ.get("KERAS_BACKEND", ""),
                                                       ["tensorflow", "tensorflow-cpu"])
    out = []
    for package in ["mlflow", "cloudpickle", "keras", "numpy", "pandas", "omegaconf", "pydantic", *backend]:
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{package}=={version(package)}")
    return out


@contextlib.contextmanager
def _fluent_uri(cfg: DictConfig, experiment_id: str) -> Iterator[None]:
    """MLflow's model logging and registry calls use the process-wide store and experiment (the store's
    registry looks the logged model up there too): this store and the run's experiment, meanwhile."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    previous_experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
    mlflow.set_tracking_uri(tracking_uri(cfg))
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_experiment is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = previous_experiment


# ------------------------------------------------------------------ the store
def _client(cfg: DictConfig):
    from mlflow.tracking import MlflowClient

    _quiet_mlflow_logs()
    uri = tracking_uri(cfg)
    check_server(cfg)
    if _sqlite_file(uri) is not None:
        _sqlite_for_concurrent_writers(_sqlite_file(uri))
    client = MlflowClient(uri)
    _open_store(client, uri, str(cfg.tracking.experiment))
    return client


# MLflow 3's UI (before 3.17, which follows its own GenAI | Model training switch) opens an experiment in the view
# this tag names; without it, it may guess the GenAI one
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client: Any, cfg: DictConfig) -> str:
    """The run's experiment (tracking.experiment), created with its artifacts beside a sqlite store, and marked
    as model training (EXPERIMENT_KIND; an experiment made before that is marked on its next run)."""
    name = str(cfg.tracking.experiment)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.tags.get("mlflow.experimentKind") is None:
            for k, v in EXPERIMENT_KIND.items():
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    db = _sqlite_file(tracking_uri(cfg))
    location = (db.resolve().parent / "mlruns").as_uri() if db is not None else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created meanwhile by a concurrent job
        return client.get_experiment_by_name(name).experiment_id


def _quiet_mlflow_logs() -> None:
    """MLflow's own chatter (schema creation, alembic migrations, 'View run' lines, model logging) stays below
    WARNING."""
    import logging

    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils", "mlflow.tracking.fluent",
                 "mlflow.tracking._tracking_service.client", "mlflow.store.sqlalchemy_store", "mlflow.pyfunc",
                 "mlflow.models.model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm bars while logging a model


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


_REACHED: set[str] = set()


def check_server(cfg: DictConfig) -> None:
    """A tracking server (tracking.uri=http://...) answers an MLflow request, asked once per process, without
    MLflow's retries (minutes of back-off): else one line naming the URI, before any work is started."""
    uri = tracking_uri(cfg)
    if not enabled(cfg) or not is_server(uri) or uri in _REACHED:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    import requests

    fix = "start it (README: 'A shared tracking server'), point tracking.uri at a running one, or tracking.enabled=false"
    try:
        r = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/get-by-name", "GET", max_retries=0,
                         timeout=10, raise_on_status=False, params={"experiment_name": str(cfg.tracking.experiment)})
    except (requests.exceptions.RequestException, MlflowException) as e:
        raise UserError(f"MLflow tracking server {uri} is unreachable ({_unreachable_reason(e)}); {fix}") from None
    if r.status_code >= 400 and not (r.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in r.text):
        said = (r.text.strip().splitlines() or [""])[0][:150]
        raise UserError(f"MLflow tracking server {uri} answered HTTP {r.status_code}"
                        f"{f' ({said})' if said else ''}; is it an MLflow server, and is its backend store healthy? "
                        f"{fix}")
    _REACHED.add(uri)


def _unreachable_reason(e: BaseException) -> str:
    """'connection error', 'connect timeout', ...: from the requests exception under MLflow's wrapper (MLflow 3
    re-raises every transport error as an MlflowException, the original as its cause or context)."""
    import requests

    cause = e
    while not isinstance(cause, requests.exceptions.RequestException) and (cause.__cause__ or cause.__context__):
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, requests.exceptions.RequestException):
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:150]
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", type(cause).__name__).lower()


_SQLITE_BUSY_MS = 60_000
_SQLITE_STORES: set[str] = set()  # the store files whose connections get _sqlite_pragmas


def _sqlite_for_concurrent_writers(db: Path) -> None:
    """Every connection MLflow (SQLAlchemy) opens to this store file in this process gets _sqlite_pragmas."""
    import sqlalchemy

    _SQLITE_STORES.add(str(db.resolve()))
    if not sqlalchemy.event.contains(sqlalchemy.engine.Engine, "connect", _sqlite_pragmas):
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", _sqlite_pragmas)


def _sqlite_pragmas(dbapi_connection: Any, record: Any) -> None:
    """WAL journal (readers never block the writer) and a busy timeout (a writer waits up to 60 s for another's
    transaction instead of failing at once): the jobs of a parallel sweep on one machine share the default
    mlflow.db. On a filesystem shared between hosts SQLite's locks are not to be trusted: use a server there."""
    import sqlite3

    if isinstance(dbapi_connection, sqlite3.Connection):
        cur = dbapi_connection.cursor()
        main = next((row[2] for row in cur.execute("PRAGMA database_list") if row[1] == "main"), "")
        if main and str(Path(main).resolve()) not in _SQLITE_STORES:
            cur.close()
            return
        cur.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_MS}")
        with contextlib.suppress(sqlite3.OperationalError):  # another process holds the database right now
            cur.execute("PRAGMA journal_mode = WAL")
        cur.close()


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:" else None


def _open_store(client: Any, uri: str, name: str) -> None:
    """Reach the store once, upgrading a sqlite store left by an older MLflow (after a backup copy)."""
    try:
        client.get_experiment_by_name(name)
        return
    except Exception as e:  # an unusable store: say which and how to fix it, not a traceback
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". Take a backup")[0][:300]
        db = _sqlite_file(uri)
        if db is None or not db.is_file() or "out-of-date database schema" not in str(e):
            raise UserError(f"MLflow store {uri} cannot be used ({first}); back it up and run `mlflow db upgrade "
                            f"{uri}`, or point tracking.uri elsewhere (or tracking.enabled=false)") from e
    _upgrade_sqlite(db, uri, first)
    client.get_experiment_by_name(name)


def _upgrade_sqlite(db: Path, uri: str, problem: str) -> None:
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
    except Exception as e:
        raise UserError(f"MLflow store {uri} cannot be used ({problem}); the automatic upgrade failed: "
                        f"{(str(e).splitlines() or [''])[0][:200]}; the database before it is in {backup}") from e


# ------------------------------------------------------------------ what a run records
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
    return " ".join(hydra_override_list())


def hydra_override_list() -> list[str]:
    """The command line's overrides (none outside a Hydra run)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):  # no Hydra run
        return []


# ------------------------------------------------------------------ sweeps: one parent run per -m
try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


def _children(client: Any, parent: str) -> list[Any]:
    """Every run whose mlflow.parentRunId is `parent`, in any experiment (a sweep may span datasets)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=10000) if ids else []


def _close_parent(uri: str, parent: str, aborted: bool, local: bool = True) -> None:
    """End a sweep's parent run from its children: FINISHED only if the sweep ran to its end and all of them did.
    A sweep stopped early by a local launcher took its running jobs with it: their runs end KILLED (a SLURM job
    outlives the sweep's process and ends its run itself)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    children = _children(client, parent)
    if aborted and local:
        for c in children:
            if c.info.status in ("RUNNING", "SCHEDULED"):
                client.set_tag(c.info.run_id, "error", "its sweep stopped before this job finished (another job failed)")
                client.set_terminated(c.info.run_id, "KILLED")
        children = _children(client, parent)
    if client.get_run(parent).info.status not in ("RUNNING", "SCHEDULED") and aborted:
        return  # already closed (a failed or interrupted job closes it at once)
    bad = [c for c in children if c.info.status != "FINISHED"]
    client.set_tag(parent, "sweep.jobs", str(len(children)))
    if not (aborted or bad):
        client.set_terminated(parent, status="FINISHED")
        return
    if aborted and not bad:
        client.set_tag(parent, "error", "the sweep stopped before its end (a job failed before its run started)")
    client.set_terminated(parent, status="KILLED" if any(c.info.status == "KILLED" for c in bad) else "FAILED")


def _close_parent_at_exit(uri: str, parent: str, local: bool) -> None:
    """The process ends with the sweep's parent still open: a job's SystemExit/exception skipped on_multirun_end."""
    if os.environ.get(PARENT_ENV) != parent:
        return  # on_multirun_end closed it
    try:
        _close_parent(uri, parent, aborted=True, local=local)
    except Exception as e:  # pragma: no cover - nothing left to report to but stderr
        print(f"tracking: warning: could not close the sweep's MLflow run {parent}: {e}")


def _parent_file(config: DictConfig) -> Path:
    """Where a sweep leaves its parent run's id for jobs that do not inherit this process's environment (a SLURM
    site that starts jobs with a clean one): the sweep folder, which every job sees (its outputs go there)."""
    return Path(str(config.hydra.runtime.cwd)) / str(config.hydra.sweep.dir) / ".mlflow_parent_run.json"


def _runs_elsewhere(config: DictConfig) -> bool:
    """The sweep's launcher starts jobs on other hosts (SLURM), not as this machine's processes."""
    return "Slurm" in str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


class SweepParentRun(Callback):  # type: ignore[misc]
    """Hydra callback: `-m` sweeps get one MLflow parent run; every job's run is its child, whichever launcher runs
    the jobs (basic: in this process; joblib, submitit_local: processes here; submitit_slurm: other hosts).

    on_multirun_start runs in the sweep's own process and creates the parent; on_job_start runs in each job's
    process (the launcher's worker) and makes the parent known there. The parent ends FINISHED when every job's run
    did; FAILED (or KILLED) as soon as one job fails (or is interrupted), and also when the sweep stops early
    without reaching on_multirun_end (checked at exit).
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not enabled(config):
            return
        uri = tracking_uri(config)
        if _runs_elsewhere(config) and not is_server(uri):
            raise UserError(f"a sweep on other hosts (hydra/launcher=submitit_slurm) cannot share the MLflow store "
                            f"{uri}: jobs on several hosts cannot lock one file safely; start a tracking server and "
                            "set tracking.uri=http://<host>:<port> (README: 'A shared tracking server')")
        client = _client(config)
        # Created, not started: it stays RUNNING while the jobs attach to it as children; on_multirun_end closes it.
        r = client.create_run(_experiment_id(client, config), run_name=f"sweep-{config.name}",
                              tags={"sweep": "parent", "hydra.overrides": " ".join(config.hydra.overrides.task),
                                    "dataset": str(config.dataset.name), "model": str(config.model.name),
                                    "sweep.launcher": str(config.hydra.runtime.choices.get("hydra/launcher")),
                                    **git_info()})
        os.environ[PARENT_ENV] = r.info.run_id
        write_json(_parent_file(config), {"run_id": r.info.run_id, "tracking_uri": uri})
        atexit.register(_close_parent_at_exit, uri, r.info.run_id, not _runs_elsewhere(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In the job's process: the parent's id from the environment, else from the sweep folder."""
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN or not enabled(config) or os.environ.get(PARENT_ENV):
            return
        if not _parent_file(config).is_file():
            return
        os.environ[PARENT_ENV] = read_json(_parent_file(config))["run_id"]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = os.environ.get(PARENT_ENV)
        if not parent or not enabled(config):
            return
        _close_parent(tracking_uri(config), parent, aborted=False)
        os.environ.pop(PARENT_ENV, None)


# ------------------------------------------------------------------ tracing an output back to its run
def run_for_file(cfg: DictConfig, path: str | Path) -> Any:
    """The MLflow run that produced a submission CSV: from its .json record, else by the CSV's sha256 tag."""
    path = Path(path)
    client = _client(cfg)
    record = path.with_suffix(".json")
    if record.is_file() and read_json(record).get("run_id"):
        return client.get_run(read_json(record)["run_id"])
    run = _run_with(client, f"tags.`submission.sha256` = '{file_sha256(path)}'")
    if run is None:
        raise UserError(f"{path}: no MLflow run in {tracking_uri(cfg)} holds a submission with this content")
    return run


def run_with_tag(cfg: DictConfig, key: str) -> Any:
    """The run (in any experiment) that carries the tag `key`, or None."""
    return _run_with(_client(cfg), f"tags.`{key}` LIKE '%'")


def _run_with(client: Any, filter_string: str) -> Any:
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=filter_string, max_results=1) if ids else []
    return runs[0] if runs else None
