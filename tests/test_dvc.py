"""The DVC pipeline (dvc.yaml), run with the real `dvc` in a temporary git repository holding the project's files.

One repository serves the whole module and the tests run in order: a first `dvc repro` runs every stage, a second
runs none, a forced prepare of unchanged data leaves everything after it up to date (byte-identical outputs), a
local remote restores everything after `dvc push` and a wiped cache, `dvc exp run -S train.epochs=2`
reruns train/evaluate/predict (not prepare) and the code trains 2 epochs, a split change reruns prepare and
everything after, then `dvc metrics show` and `dvc plots show`.
The temporary repository's conf/pipeline.yaml is shrunk to the TINY demo (48x48, a few dozen images, 1 epoch)
so that `dvc exp run`, which recomposes params.yaml from conf/, keeps it tiny too.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow

# Files the pipeline needs besides `git ls-files` (they may not be committed yet while the tree is being worked on).
PIPELINE_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", "conf/pipeline.yaml",
                  "src/dvc_params.py"]
TINY_PIPELINE = {"dataset": {"image_size": 48, "demo": {"n_train_per_class": 24, "n_test": 12}},
                 "train": {"epochs": 1, "batch_size": 16}, "prepare": {"workers": 1}, "tracking": {"enabled": False}}
STAGES = ["prepare", "train", "evaluate", "predict"]
MEMBERS = ["cnn_cv", "resnet_cv"]
CV_STAGES = [*(f"cv_train@{m}" for m in MEMBERS), *(f"cv_evaluate@{m}" for m in MEMBERS), "blend"]
ALL = STAGES + CV_STAGES


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GIT_"))}
    env.update({
        # stage commands say `python`: the interpreter running the tests (the project's .venv)
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    return env


def sh(repo: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(list(args), cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n"
                             f"--- stderr\n{p.stderr[-4000:]}")
    return p


def dvc(repo: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "dvc", *args, **kw)


def ran(p: subprocess.CompletedProcess) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` ran (not skipped, not restored from the run cache)."""
    return re.findall(r"Running stage '([^']+)'", p.stdout + p.stderr)


def git_commit(repo: Path, message: str) -> None:
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git repository with the project's files, the tiny demo as the pipeline's config, and params.yaml composed."""
    r = tmp_path_factory.mktemp("dvcrepo")
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    for rel in sorted({*filter(None, tracked.split("\0")), *PIPELINE_FILES}):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("dvc.lock", ".dvc/cache", ".dvc/tmp")):
            (r / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, r / rel)
    pipeline = yaml.safe_load((r / "conf/pipeline.yaml").read_text())
    for key, value in TINY_PIPELINE.items():
        pipeline[key] = {**pipeline.get(key, {}), **value}
    for member in pipeline["members"].values():  # two folds a member keep the cross-validated stages quick
        member["cv"] = {"folds": 2}
    (r / "conf/pipeline.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    sh(r, sys.executable, "-m", "src.dvc_params")
    sh(r, "git", "init", "-q")
    git_commit(r, "project at test time, tiny demo pipeline")
    return r


def test_committed_params_yaml_is_conf_composed():
    """params.yaml in the project is exactly conf/pipeline.yaml composed: no drift between the two entry points."""
    p = subprocess.run([sys.executable, "-m", "src.dvc_params", "--check"], cwd=ROOT, capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout


def test_first_repro_runs_every_stage(repo: Path):
    p = dvc(repo, "repro")
    assert ran(p) == ALL, p.stdout
    assert (repo / "data/raw/demo/train").is_dir()  # the demo raw data, generated by prepare
    assert (repo / "data/processed/demo/train.npy").is_file()
    assert len(json.loads((repo / "models/demo/seed_cnn/history.json").read_text())) == 1
    assert (repo / "plots/demo/seed_cnn/learning_curve.png").is_file()
    assert (repo / "plots/demo/seed_cnn/val_predictions.csv").is_file()
    assert (repo / "plots/demo/seed_cnn/most_wrong.png").is_file()
    assert (repo / "submissions/demo-seed_cnn.csv").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert list(lock["stages"]) == ALL
    for m in MEMBERS:  # each member: both folds, their OOF over every training image, the blend of the two
        assert (repo / f"models/demo/{m}/fold-1/model.keras").is_file()
        assert len(pd.read_csv(repo / f"predictions/demo/{m}/oof.csv")) == 48
    assert len(pd.read_csv(repo / "submissions/demo-demo_blend.csv")) == 12
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 1
    git_commit(repo, "pipeline ran")


def test_second_repro_runs_nothing(repo: Path):
    p = dvc(repo, "repro")
    assert ran(p) == [], p.stdout
    assert "up to date" in p.stdout


def test_forced_prepare_of_unchanged_data_reruns_nothing_after_it(repo: Path):
    """prepare's outputs depend on the data and config alone (state.json, its mtime fingerprint, is dvcignored):
    redoing it on the same raw files leaves DVC's hash of the processed folder, and so training, untouched."""
    assert ran(dvc(repo, "repro", "--force", "--single-item", "prepare")) == ["prepare"]
    status = dvc(repo, "status").stdout
    assert status.strip().endswith("Data and pipelines are up to date."), status
    assert ran(dvc(repo, "repro")) == []


def test_local_remote_push_pull(repo: Path):
    store = repo.parent / "dvc_store"
    dvc(repo, "remote", "add", "--local", "-d", "local", str(store))
    dvc(repo, "push")
    shutil.rmtree(repo / ".dvc/cache")
    shutil.rmtree(repo / "data")  # raw + processed: pulled back with new mtimes, as in a fresh clone
    shutil.rmtree(repo / "models")
    dvc(repo, "pull")
    assert (repo / "data/raw/demo/train").is_dir() and (repo / "data/processed/demo/train.npy").is_file() and (repo / "models/demo/seed_cnn/model.keras").is_file()
    assert ran(dvc(repo, "repro")) == []


def test_exp_run_set_param_reaches_the_code(repo: Path):
    """`dvc exp run -S train.epochs=2` recomposes params.yaml from conf/ and the train stage trains 2 epochs;
    a training parameter reruns train, evaluate and predict, never prepare."""
    p = dvc(repo, "exp", "run", "-S", "train.epochs=2", "-n", "two-epochs")
    assert ran(p) == ["train", "evaluate", "predict", *CV_STAGES], p.stdout  # train.* is every model's
    assert "Stage 'prepare' didn't change" in p.stdout
    assert "running prepare first" not in p.stdout  # pulled files' new mtimes must not re-prepare inside train
    assert dvc(repo, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"] == 2
    assert len(json.loads((repo / "models/demo/seed_cnn/history.json").read_text())) == 2
    assert (repo / "conf/pipeline.yaml").read_text() == sh(repo, "git", "show", "HEAD:conf/pipeline.yaml").stdout
    diff = dvc(repo, "params", "diff", "--json")
    change = json.loads(diff.stdout)["params.yaml"]["train.epochs"]
    assert (change["old"], change["new"]) == (1, 2), diff.stdout
    show = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    exps = [e for rev in show for e in (rev.get("experiments") or [])]
    epochs = {e["name"]: run["data"]["params"]["params.yaml"]["data"]["train"]["epochs"]
              for e in exps for run in e["revs"]}
    assert epochs.get("two-epochs") == 2, epochs
    metrics = [run["data"]["metrics"] for e in exps for run in e["revs"] if e["name"] == "two-epochs"]
    assert "val_log_loss" in json.dumps(metrics)  # metrics are cached, so every experiment shows its own


def test_one_member_change_reruns_that_member_and_the_blend_only(repo: Path):
    # train.epochs=2: what the workspace holds since the experiment before (-S recomposes params.yaml from conf/)
    p = dvc(repo, "exp", "run", "-S", "train.epochs=2", "-S", "members.resnet_cv.train.lr=1e-3", "-n", "resnet-lr")
    assert ran(p) == ["cv_train@resnet_cv", "cv_evaluate@resnet_cv", "blend"], p.stdout
    assert dvc(repo, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    show = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    metrics = [run["data"]["metrics"] for rev in show for e in (rev.get("experiments") or []) for run in e["revs"]
               if e["name"] == "resnet-lr"]
    text = json.dumps(metrics)
    assert "metrics/demo/resnet_cv.json" in text and "fold_val_log_loss_mean" in text  # the OOF metrics
    assert "metrics/demo/demo_blend.json" in text


def test_split_change_reruns_prepare_and_everything_after(repo: Path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"]["val_fraction"] = 0.4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the single-model chain is rerun; the cross-validated stages are only shown stale (rerunning them all
    # again would double this module's time and prove nothing more)
    p = dvc(repo, "repro", "predict")
    assert ran(p) == ["prepare", "train", "evaluate", "predict"], p.stdout
    report = json.loads((repo / "data/processed/demo/report.json").read_text())
    assert report["val_images"] == 20  # 40% of 24 per class, was 20%
    stale = dvc(repo, "status").stdout
    assert all(f"cv_train@{m}:" in stale for m in MEMBERS), stale  # the folds train on the processed data
    assert not any(f"\n{stage}:" in "\n" + stale for stage in ("prepare", "train", "evaluate", "predict")), stale


def test_metrics_and_plots_show(repo: Path):
    p = dvc(repo, "metrics", "show")
    assert "metrics/demo/seed_cnn.json" in p.stdout and "val_log_loss" in p.stdout, p.stdout
    out = repo.parent / "dvc_plots"
    p = dvc(repo, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text()
    assert "learning curve (log loss)" in html and "learning_curve.png" in html
    assert "most_wrong.png" in html and "confused_pairs.png" in html  # the error grids
