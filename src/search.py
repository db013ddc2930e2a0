"""Hyper-parameter search: an Optuna study whose trials are this project's own training runs.

    python -m src.search dataset=demo search.trials=20                 # the space in conf/search/default.yaml
    python -m src.search dataset=demo model=resnet_small search=resnet_small search.timeout=3600

Each trial samples the keys of search.space (TPE, seeded by search.seed), trains through the train stage in this
process as the run <study>-trial<k> (models/<dataset>/<study>-trial<k>/, an MLflow child of the study's parent run
`search-<study>`), reports every epoch's val_log_loss to the pruner (search.pruner), which may stop it at an epoch
end (the run then ends cleanly: best checkpoint, predictions, MLflow status KILLED with the tag optuna.state=PRUNED).
The study lives in SQLite (optuna.db beside the MLflow store): the same command after a kill continues it, a killed
trial is retried with the same parameters and resumes its training from its checkpoint, and the study stops at
search.trials finished trials. At the end the best trial's overrides are printed as a `python -m src.train` command
and written to models/<dataset>/<study>-search/best.json (with trials.csv, every trial).

Why not Hydra's Optuna sweeper: it pins optuna<3, whose SQLite storage does not start on this project's SQLAlchemy 2
(an assertion in its schema check), and a sweeper only sees each job's final value, so it cannot prune.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shlex
import warnings
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from . import checkpoint, config, interrupts, pipeline, search_space, tracking, train
from .errors import UserError
from .files import locked, read_json, short_hash, write_json
from .paths import Layout

PARENT, FINGERPRINT = "mlflow_parent_run_id", "fingerprint"     # study attributes
ERROR, PRUNED_AT, RUN_NAME = "error", "pruned_at_epoch", "run_name"   # trial attributes


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the study (or continue it) to search.trials finished trials; return the best trial's record."""
    cfg = _resolved(cfg)
    dims = search_space.parse(cfg)
    _check(cfg, dims)
    pipeline.prerequisites(cfg, "train")  # prepare once: a data problem is one line, not a failed trial each
    lay = Layout(cfg)
    with _exclusive(lay), _quiet_optuna():
        study = _study(cfg, lay, dims)
        tags = {"search": "parent", "search.study": lay.study, "dataset": lay.dataset, "model": str(cfg.model.name),
                "optuna.storage": _storage_url(cfg, lay), "hydra.overrides": tracking.hydra_overrides(),
                **tracking.git_info()}
        with tracking.parent_run(cfg, f"search-{lay.study}", study.user_attrs.get(PARENT), tags,
                                 failed_children_fail_it=False) as parent:
            if parent.id:
                study.set_user_attr(PARENT, parent.id)
                parent.log_params(tracking.config_params(cfg))
            _recover(cfg, study, parent.id)
            _optimize(cfg, study, dims)
            return _report(cfg, lay, study, dims, parent)


def _resolved(cfg: DictConfig) -> DictConfig:
    """The config with its interpolations resolved: a trial's new name must not rename the study (${name})."""
    out = cfg.copy()
    OmegaConf.resolve(out)
    return out


def _check(cfg: DictConfig, dims: list[search_space.Dimension]) -> None:
    """Everything a trial could trip over, before the first one: the config, each key's range, the baseline."""
    if cfg.cv.folds:
        raise UserError("search: cv.folds is not supported (a trial is one model on the validation fold); "
                        "search without cv.folds, then train the best command with cv.folds=k")
    config.check(cfg, "train")
    search_space.check_values(cfg, dims)
    if cfg.search.start_from_config:
        search_space.baseline(cfg, dims)


def _exclusive(lay: Layout) -> contextlib.AbstractContextManager[None]:
    """One process per study: the lock tells a rerun that trials left RUNNING belong to a process that is gone."""
    return locked(lay.search_dir, f"another search is running study {lay.study} ({lay.search_dir}); wait for it, "
                                  "stop it, or give this one another search.study=...")


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial log lines and experimental-API warnings off (this module prints one line per trial), and
    TensorFlow's warning that each trial's new model traces its functions anew (it must: it is a new model)."""
    import optuna

    level, tf_logger = optuna.logging.get_verbosity(), logging.getLogger("tensorflow")
    tf_level = tf_logger.level
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    tf_logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)
            tf_logger.setLevel(tf_level)


# ------------------------------------------------------------------ the study
def _storage_url(cfg: DictConfig, lay: Layout) -> str:
    return tracking.rooted(str(cfg.search.storage)) if cfg.search.storage else f"sqlite:///{lay.optuna_db}"


def _study(cfg: DictConfig, lay: Layout, dims: list[search_space.Dimension]):
    """The study, created or loaded; the same name with another space or training config is refused."""
    import optuna

    url = _storage_url(cfg, lay)
    try:
        study = optuna.create_study(study_name=f"{lay.dataset}/{lay.study}", storage=url, direction="minimize",
                                    pruner=_pruner(cfg.search.pruner), load_if_exists=True)
    except Exception as e:  # an unreachable or foreign database
        raise UserError(f"search.storage: cannot open the Optuna store {url} ({str(e).splitlines()[0][:200]}); "
                        "point search.storage at an sqlite:/// file or another database") from e
    fingerprint = short_hash({"space": OmegaConf.to_container(cfg.search.space), "train": checkpoint.config_hash(cfg)})
    known = study.user_attrs.get(FINGERPRINT)
    if known and known != fingerprint:
        raise UserError(f"study {lay.study} in {url} was made with another search space or training config; rerun "
                        "it with the same ones to continue it, or start a new study with search.study=<name>")
    study.set_user_attr(FINGERPRINT, fingerprint)
    # A fresh seed for each process: a rerun must not sample again what the killed run sampled first.
    study.sampler = optuna.samplers.TPESampler(seed=int(cfg.search.seed) + len(study.trials))
    if not study.trials and cfg.search.start_from_config:
        study.enqueue_trial({d.key: d.encode(v) for d, v in zip(dims, search_space.baseline(cfg, dims).values())})
    return study


def _pruner(p: DictConfig):
    """Steps are epochs (1 = the first); none prunes before epoch warmup_epochs + 1."""
    import optuna

    first = int(p.warmup_epochs) + 1
    if p.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(p.startup_trials), n_warmup_steps=first)
    if p.kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    if p.kind == "threshold":
        return optuna.pruners.ThresholdPruner(upper=float(p.threshold), n_warmup_steps=first)
    return optuna.pruners.NopPruner()


def _recover(cfg: DictConfig, study, parent_id: str | None) -> None:
    """Trials a killed or interrupted run left unfinished: each marked FAIL and queued again with its parameters
    (Optuna's RetryHeartbeatStaleTrialCallback, its epochs' values kept); their MLflow runs made consistent."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    retry = RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)
    keep: set[str] = set()
    for t in _unfinished(study):
        if t.state == TrialState.RUNNING:  # its process is gone: _exclusive holds the study's lock
            t = study.tell(t.number, state=TrialState.FAIL)
        retry(study, t)
        keep |= _run_ids(cfg, t)
        print(f"search: trial {t.number} did not finish (the search was stopped); it is run again")
    deleted = tracking.close_orphans(cfg, parent_id, keep, "the search stopped during this trial; a rerun resumes it",
                                     done_tag="optuna.state")
    if deleted:
        print(f"search: {deleted} MLflow run(s) of trials stopped before their first epoch deleted (retried afresh)")


def _unfinished(study) -> list[Any]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    # FAIL without an error of its own: stopped by Ctrl-C, SIGTERM or a crash, wherever it was (sampling included)
    return [t for t in trials if t.number not in retried and (
        t.state == TrialState.RUNNING or (t.state == TrialState.FAIL and ERROR not in t.user_attrs))]


def _retried(trials: list[Any]) -> set[int]:
    """The trials that a later trial runs again (RetryHeartbeatStaleTrialCallback's retry_history)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _run_ids(cfg: DictConfig, trial) -> set[str]:
    """The MLflow runs a stopped trial's outputs name (its checkpoint's, or its finished run's): kept, resumed."""
    if RUN_NAME not in trial.user_attrs:
        return set()
    lay = Layout(search_space.apply(cfg, {"name": trial.user_attrs[RUN_NAME]}))
    files = [f for f in (lay.checkpoint_state, lay.run_info) if f.is_file()]
    return {read_json(f).get("run_id") for f in files} - {None}


def _finished_count(study) -> int:
    """Trials that ran to an end (complete, pruned, failed), not counting those stopped and retried."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in ended and t.number not in retried for t in trials)


def _optimize(cfg: DictConfig, study, dims: list[search_space.Dimension]) -> None:
    left = int(cfg.search.trials) - _finished_count(study)
    if left <= 0:
        print(f"search: study {cfg.search.study} already has {cfg.search.trials} finished trials (search.trials)")
        return
    timeout = float(cfg.search.timeout) if cfg.search.timeout else None
    limit = f", for at most {timeout:g} s" if timeout else ""
    print(f"search: study {cfg.search.study}: {left} trial(s) to run{limit}")
    study.optimize(lambda trial: _trial(cfg, trial, dims), n_trials=left, timeout=timeout, gc_after_trial=True)


# ------------------------------------------------------------------ one trial
def _trial(cfg: DictConfig, trial, dims: list[search_space.Dimension]) -> float:
    """Train one sampled config; its best val_log_loss (NaN marks the trial failed, with its one-line reason)."""
    import optuna

    values = search_space.sample(trial, dims)
    shown = search_space.shown(values)
    try:
        tcfg = _trial_config(cfg, trial, values)
        summary, pruned_at = _train(tcfg, trial)
    except UserError as e:
        trial.set_user_attr(ERROR, str(e)[:2000])  # a result: not retried by a rerun (_recover)
        print(f"search: trial {trial.number} failed: {e}")
        return math.nan
    _finish_run(tcfg, trial, summary, values, pruned_at)
    value = float(summary["best_val_log_loss"])
    if pruned_at:
        print(f"search: trial {trial.number} pruned at epoch {pruned_at} (best val_log_loss {value:.4f}): {shown}")
        raise optuna.TrialPruned(f"pruned at epoch {pruned_at}")
    print(f"search: trial {trial.number} val_log_loss {value:.4f} (epoch {summary['best_epoch']}): {shown}")
    return value


def _trial_config(cfg: DictConfig, trial, values: dict[str, Any]) -> DictConfig:
    """The trial's config, checked: the sampled values, and its name (a retried trial keeps the first one's)."""
    name = trial.user_attrs.get(RUN_NAME) or f"{cfg.search.study}-trial{trial.number}"  # retries inherit it
    trial.set_user_attr(RUN_NAME, name)
    tcfg = search_space.apply(cfg, {**values, "name": name})
    config.check(tcfg, "train")
    return tcfg


def _train(tcfg: DictConfig, trial) -> tuple[dict[str, Any], int | None]:
    """The trial's training run and the epoch it was pruned at (None: not pruned). A training that had finished
    before the search was stopped is taken as it is; a stopped one resumes from its checkpoint."""
    done = train.trained(tcfg)
    if done:
        return done, trial.user_attrs.get(PRUNED_AT)
    pruning = _pruning_callback(trial)
    summary = pipeline.run(tcfg, "train", callbacks=[pruning])
    return summary, pruning.pruned_at


def _pruning_callback(trial):
    """A Keras callback that reports each epoch's val_log_loss to the trial and stops training when the pruner
    says so. It runs after checkpoint.EpochEnd, so the epoch it stops at is checkpointed and logged like any."""
    import keras

    class Pruning(keras.callbacks.Callback):
        pruned_at: int | None = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = float((logs or {}).get("val_log_loss", math.nan))
            if interrupts.pending() or not math.isfinite(value):  # not a finished epoch (EpochEnd stops the run)
                return
            trial.report(value, epoch + 1)
            if trial.should_prune():
                self.pruned_at = epoch + 1
                trial.set_user_attr(PRUNED_AT, epoch + 1)
                print(f"train: pruned by the search at epoch {epoch + 1} (val_log_loss={value:.4f})")
                self.model.stop_training = True

    return Pruning()


def _finish_run(tcfg: DictConfig, trial, summary: dict[str, Any], values: dict[str, Any],
                pruned_at: int | None) -> None:
    """The trial's MLflow run: its Optuna tags and the overrides that reproduce it; KILLED if pruned."""
    trial.set_user_attr("mlflow_run_id", summary.get("run_id"))
    tags = {"search.study": str(tcfg.search.study), "optuna.trial": trial.number,
            "optuna.state": "PRUNED" if pruned_at else "COMPLETE",
            "hydra.overrides": " ".join(_command_overrides(values)),  # what reproduces the trial with src.train
            **({"optuna.pruned_at_epoch": pruned_at} if pruned_at else {})}
    tracking.end_run(tcfg, summary.get("run_id"), "KILLED" if pruned_at else "FINISHED", tags)


# ------------------------------------------------------------------ the result
def _command_overrides(values: dict[str, Any]) -> list[str]:
    """The search's own command-line overrides (less search.*, name and the searched keys), then a trial's values."""
    def kept(o: str) -> bool:
        key = o.lstrip("+~").split("=")[0]
        return not (key.startswith("search") or key == "name" or key in values)

    return [*filter(kept, tracking.hydra_override_list()), *search_space.overrides(values)]


def _report(cfg: DictConfig, lay: Layout, study, dims: list[search_space.Dimension], parent: tracking.Run) -> dict:
    """best.json and trials.csv in models/<dataset>/<study>-search/, the parent run's metrics, the best command."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "failed": TrialState.FAIL}
    counts = {k: sum(t.state == s for t in trials) for k, s in states.items()}
    study.trials_dataframe().to_csv(lay.search_trials, index=False)
    if not counts["complete"]:
        raise UserError(f"search: study {lay.study} has no completed trial ({counts['pruned']} pruned, "
                        f"{counts['failed']} failed; see {lay.search_trials}); raise search.trials to run more, or "
                        "prune less (search.pruner.*)")
    best = study.best_trial
    values = search_space.params_to_values(best.params, dims)
    command = shlex.join(["python", "-m", "src.train", *_command_overrides(values), f"name={lay.study}-best"])
    run_name = best.user_attrs.get(RUN_NAME)
    record = {"study": lay.study, "storage": _storage_url(cfg, lay), "best_trial": best.number,
              "best_val_log_loss": best.value, "best_run": run_name, "values": values,
              "model_dir": str(Layout(search_space.apply(cfg, {"name": run_name})).model_dir),
              "overrides": search_space.overrides(values), "command": command, "trials": counts,
              "trial_seconds": round(sum((t.duration.total_seconds() for t in trials if t.duration)), 1),
              "mlflow_parent_run_id": parent.id, "mlflow_best_run_id": best.user_attrs.get("mlflow_run_id")}
    write_json(lay.search_best, record)
    parent.log_metrics({"best_val_log_loss": best.value, **{f"trials_{k}": v for k, v in counts.items()}})
    parent.set_tags({"search.best_trial": best.number, "search.best_command": command})
    parent.log_files({None: [lay.search_best, lay.search_trials]})
    _print_report(lay, record)
    return record


def _print_report(lay: Layout, record: dict[str, Any]) -> None:
    t = record["trials"]
    print(f"search: {lay.study}: {t['complete']} complete, {t['pruned']} pruned, {t['failed']} failed "
          f"(retried ones included); best trial {record['best_trial']} ({record['best_run']}): val_log_loss "
          f"{record['best_val_log_loss']:.4f}")
    print(f"search: its model is {record['model_dir']} (evaluate/predict it with name={record['best_run']}); "
          "to train it again:")
    print(f"  {record['command']}")
    print(f"search: -> {lay.search_best}")


if __name__ == "__main__":
    from .cli import main

    main("search", run)
