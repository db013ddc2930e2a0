"""python -m src.search: bad search spaces are one line before any trial; a tiny 3-trial study with a pruned trial,
killed mid-search (SIGKILL) and rerun, finishes with every trial once in Optuna and once under one MLflow parent."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY, compose, path_overrides, run_cli


def _search_cfg(base: Path, *extra: str):
    return compose(*TINY, *path_overrides(base), *extra)


@pytest.mark.parametrize("override, message", [
    ("+search.space.train.lrr={type:float,low:0.1,high:0.2}", "search.space.train.lrr: train.lrr is not a config key"),
    ("search.space.train.lr.high=1e-5", "search.space.train.lr.high=1e-05 is not allowed; expected a number above "
                                        "low=0.0003 (the range is empty)"),
    ("search.space.train.lr.type=gauss", "search.space.train.lr.type='gauss' is not allowed; expected one of float, "
                                         "int, categorical"),
    ("search.space.train.lr.low=0", "search.space.train.lr.low=0.0 is not allowed; expected a number > 0 with log"),
    ("search.space.train.batch_size.choices=[]", "search.space.train.batch_size.choices=[] is not allowed"),
    ("search.space.augment.zoom.high=1.5", "search.space.augment.zoom: the value 1.5 would fail: config error: "
                                           "augment.zoom=1.5 is not allowed; expected a number in [0, 1)"),
    ("+search.space.dataset.image_size={type:int,low:32,high:64}", "only keys of train, augment, model"),
    ("+search.space.model.arch={type:categorical,choices:[seed_cnn]}", "model.arch cannot be searched"),
    ("+search.space.train.lr.choices=[1]", "search.space.train.lr.choices=[1] is not allowed; expected nothing"),
    ("search.space.model.dropout=0.3", "search.space.model.dropout=0.3 is not a search dimension"),
    ("train.lr=0.5", "search.start_from_config: train.lr=0.5 (the config's value) lies outside search.space.train.lr"),
])
def test_a_bad_search_space_is_one_line_before_any_trial(tmp_path, override, message):
    from src import search
    from src.errors import UserError

    with pytest.raises(UserError) as e:
        search.run(_search_cfg(tmp_path, override))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "processed").exists()  # nothing ran


def test_an_empty_search_space_is_one_line(tmp_path):
    from src import search
    from src.errors import UserError

    cfg = _search_cfg(tmp_path)
    cfg.search.space = {"train": {}}  # (an override merges into the space: it cannot empty it)
    with pytest.raises(UserError, match="^search.space is empty; give at least one key to search"):
        search.run(cfg)


def test_the_command_answers_a_bad_space_with_one_line_and_exit_2(tmp_path):
    r = run_cli("src.search", *TINY, *path_overrides(tmp_path), "search.space.augment.zoom.low=0.5",
                "search.space.augment.zoom.high=0.2")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: config error: search.space.augment.zoom.high=0.2 is not allowed; expected a number above low=0.5 "
        "(the range is empty) (fix it in conf/ or override it, e.g. search.space.augment.zoom.high=...)"]


# A 3-trial study: trial 0 is the config itself (2 epochs); the others sample train.epochs from {2, 4}, and the
# threshold pruner (val_log_loss above 0: always) may prune from epoch 3 on, so exactly the 4-epoch trials are pruned,
# at epoch 3 of 4. search.seed=1 samples 4 epochs for trial 1 (checked below: the test needs one pruned trial).
STUDY = [*(o for o in TINY if not o.startswith("train.epochs=")), "train.epochs=2", "search.trials=3", "search.seed=1",
         "search.pruner.kind=threshold", "search.pruner.threshold=0.0", "search.pruner.warmup_epochs=2",
         "+search.space.train.epochs={type:categorical,choices:[2,4]}"]


def _rows(db: Path, query: str) -> list[tuple]:
    """Rows straight from a SQLite store (Optuna's, MLflow's) while the search writes it; none before it exists."""
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute(query).fetchall()
    except sqlite3.Error:  # not created yet, or mid-write
        return []


def _start_and_kill(args: list[str], base: Path) -> None:
    """Run the search and SIGKILL it while trial 1 trains, once MLflow holds its first epoch (so the rerun
    resumes the trial from its checkpoint), or at the latest while a later trial runs."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    p = subprocess.Popen([sys.executable, "-m", "src.search", *args], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_epoch = ("SELECT m.step FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid "
                   "WHERE r.name = 'seed_cnn-trial1' AND m.key = 'val_log_loss'")
    deadline = time.time() + 240
    try:
        while time.time() < deadline and p.poll() is None:
            running = [n for n, s in _rows(base / "optuna.db", "SELECT number, state FROM trials") if s == "RUNNING"]
            if running and (running[0] >= 2 or (running[0] == 1 and _rows(base / "mlflow.db", first_epoch))):
                break
            time.sleep(0.05)
        assert p.poll() is None, f"the search ended before it could be killed: {p.stderr.read()}"
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    assert "RUNNING" in {s for _, s in _rows(base / "optuna.db", "SELECT number, state FROM trials")}


@pytest.mark.slow
def test_a_killed_search_resumes_to_its_trial_count_with_one_mlflow_parent(tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient

    args = [*STUDY, *path_overrides(tmp_path)]
    db = tmp_path / "optuna.db"
    models = tmp_path / "models" / "demo"
    _start_and_kill(args, tmp_path)

    r = run_cli("src.search", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "did not finish (the search was stopped); it is run again" in r.stdout

    study = optuna.load_study(study_name="demo/seed_cnn", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 3 and {t.number for t in trials} == set(range(len(trials)))
    assert all(t.number in retried for t in trials if t.state == optuna.trial.TrialState.FAIL)
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                         optuna.trial.TrialState.FAIL}
    for t in trials:  # no trial lost: each stopped one was run again with its very parameters
        if t.number in retried:
            assert any(u.params == t.params and u in done for u in trials if t.number in u.system_attrs.get(
                "retry_history", []))
    names = [t.user_attrs["run_name"] for t in done]
    assert len(set(names)) == 3 and done[0].params["train.epochs"] == 2  # trial 0: the config as composed
    pruned = [t for t in done if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and [t.params["train.epochs"] for t in pruned] == [4] * len(pruned)
    assert all(t.user_attrs["pruned_at_epoch"] == 3 and max(t.intermediate_values) == 3 for t in pruned)
    assert all(t.params["train.epochs"] == 2 for t in done if t not in pruned)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("kagglepipe-demo").experiment_id
    parent = client.search_runs([exp], filter_string="tags.search = 'parent'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED" and parent[0].info.run_name == "search-seed_cnn"
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent[0].info.run_id}'")
    assert sorted(c.info.run_name for c in children) == sorted(names)  # each trial once, none left RUNNING
    for t in done:
        child = next(c for c in children if c.info.run_name == t.user_attrs["run_name"])
        assert child.info.run_id == t.user_attrs["mlflow_run_id"]
        epochs = [m.step for m in client.get_metric_history(child.info.run_id, "val_log_loss")]
        if t in pruned:  # stopped cleanly at the pruned epoch: KILLED, tagged, its outputs complete
            assert child.info.status == "KILLED" and child.data.tags["optuna.state"] == "PRUNED"
            assert epochs == [1, 2, 3]
        else:
            assert child.info.status == "FINISHED" and child.data.tags["optuna.state"] == "COMPLETE"
            assert epochs == [1, 2]
        assert (models / child.info.run_name / "model.keras").is_file()
        assert not (models / child.info.run_name / "checkpoint").exists()

    best = json.loads((models / "seed_cnn-search" / "best.json").read_text())
    complete = [t for t in done if t not in pruned]
    assert best["best_trial"] == min(complete, key=lambda t: t.value).number
    assert best["command"].startswith("python -m src.train dataset=demo ")
    assert f"train.lr={study.best_params['train.lr']!r}" in best["command"]
    assert best["trials"]["complete"] + best["trials"]["pruned"] == 3
