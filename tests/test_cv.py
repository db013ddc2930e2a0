"""Cross-validation and blending (src/split.py assign_cv_folds, src/oof.py, src/blend.py, the train loop):
folds partition the training set, stratified to within one image per class and stable when images are added;
the k fold models' OOF predictions cover every training image once and their test predictions average as numpy
says; blend weights are what an independent scipy fit gives; mismatched members are refused with one line; a
fold killed mid-training resumes while the finished folds stay as they were; the MLflow parent run, its fold
children and the blend's own run are complete. Tiny demo data, one epoch, in process unless a kill is needed.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, TINY, compose, path_overrides
from src import blend, oof, pipeline
from src.errors import UserError
from src.files import file_sha256, read_json
from src.split import assign_cv_folds

K = 3


# ------------------------------------------------------------------ the folds
def _ids(n_per_class: int, start: int = 0) -> tuple[pd.Series, pd.Series]:
    ids = [f"{c}.{n}" for c in ("cat", "dog") for n in range(start, start + n_per_class)]
    return pd.Series(ids), pd.Series([0] * n_per_class + [1] * n_per_class)


@pytest.mark.parametrize("k, n", [(2, 7), (3, 24), (5, 1001), (10, 57)])
def test_folds_partition_and_are_stratified_to_one_image(k: int, n: int):
    ids, labels = _ids(n)
    folds = assign_cv_folds(ids, labels, k, seed=0)
    assert set(folds) == set(range(k))                                   # every image in exactly one fold
    for c in (0, 1):
        counts = np.bincount(folds[labels == c], minlength=k)
        assert counts.sum() == n and (np.abs(counts - n / k) < 1).all(), counts   # the stated tolerance: < 1 image
    np.testing.assert_array_equal(folds, assign_cv_folds(ids, labels, k, seed=0))            # stable across runs
    perm = np.random.default_rng(1).permutation(len(ids))                                      # row order is irrelevant
    shuffled = assign_cv_folds(ids[perm].reset_index(drop=True), labels[perm].reset_index(drop=True), k, seed=0)
    assert dict(zip(ids[perm], shuffled)) == dict(zip(ids, folds))
    assert not np.array_equal(folds, assign_cv_folds(ids, labels, k, seed=1))                 # seeded


def test_adding_images_moves_few_old_ones_to_a_neighbouring_fold():
    k, n, m = 5, 1000, 50
    ids, labels = _ids(n)
    old = dict(zip(ids, assign_cv_folds(ids, labels, k, seed=3)))
    more_ids, more_labels = _ids(m, start=n)
    all_ids, all_labels = pd.concat([ids, more_ids], ignore_index=True), pd.concat([labels, more_labels], ignore_index=True)
    new = dict(zip(all_ids, assign_cv_folds(all_ids, all_labels, k, seed=3)))
    moved = [i for i in old if old[i] != new[i]]
    assert len(moved) <= 2 * m * (k - 1), len(moved)                      # at most m per boundary, per class
    assert all(abs(old[i] - new[i]) == 1 for i in moved)                  # only across one boundary
    assert len(moved) < 0.1 * len(old)


# ------------------------------------------------------------------ averaging and weights, against numpy/scipy
def test_fold_average_in_probability_and_logit_space():
    rng = np.random.default_rng(0)
    p = [rng.uniform(0.01, 0.99, 20) for _ in range(3)]
    np.testing.assert_allclose(oof.average(p, "probability"), np.mean(p, axis=0))
    logit = np.mean([np.log(q / (1 - q)) for q in p], axis=0)
    np.testing.assert_allclose(oof.average(p, "logit"), 1 / (1 + np.exp(-logit)))
    rows = [rng.dirichlet(np.ones(4), 20) for _ in range(3)]
    geo = np.exp(np.mean([np.log(r) for r in rows], axis=0))
    np.testing.assert_allclose(oof.average(rows, "logit"), geo / geo.sum(axis=1, keepdims=True))


def test_blend_weights_minimise_oof_log_loss_like_scipy():
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 600)
    good = 1 / (1 + np.exp(-(np.where(y == 1, 1.5, -1.5) + rng.normal(0, 1.2, 600))))
    noisy = 1 / (1 + np.exp(-(np.where(y == 1, 0.8, -0.8) + rng.normal(0, 1.5, 600))))
    w = blend.fit_weights(y, [good, noisy], "logit", "log_loss")
    assert w.min() >= 0 and w.sum() == pytest.approx(1)

    def loss(a):  # computed here independently: the logit-space mix a * logit(good) + (1 - a) * logit(noisy)
        z = a * np.log(good / (1 - good)) + (1 - a) * np.log(noisy / (1 - noisy))
        return log_loss(y, 1 / (1 + np.exp(-z)), labels=[0, 1])

    best = minimize_scalar(loss, bounds=(0, 1), method="bounded", options={"xatol": 1e-8})
    assert w[0] == pytest.approx(best.x, abs=2e-3)
    assert loss(w[0]) <= min(loss(1.0), loss(0.0)) + 1e-9                 # at least as good as either member
    np.testing.assert_allclose(blend.combine([good, noisy], w, "logit"),
                               1 / (1 + np.exp(-(w[0] * np.log(good / (1 - good)) + w[1] * np.log(noisy / (1 - noisy))))))


def test_accuracy_blend_weights_search_the_simplex():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 300)
    onehot = np.eye(3)[y]
    a = 0.6 * onehot + 0.4 * rng.dirichlet(np.ones(3), 300)
    b = rng.dirichlet(np.ones(3), 300)
    w = blend.fit_weights(y, [a, b], "probability", "accuracy")
    grid = [np.array([i, 20 - i]) / 20 for i in range(21)]
    acc = [((x[0] * a + x[1] * b).argmax(1) == y).mean() for x in grid]
    assert ((w[0] * a + w[1] * b).argmax(1) == y).mean() == pytest.approx(max(acc))


# ------------------------------------------------------------------ members on tiny data
def _cfg(base: Path, *extra: str):
    return compose(*TINY, *path_overrides(base), "tracking.enabled=false", f"cv.folds={K}", *extra)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> Path:
    """Two cross-validated members (seed_cnn; resnet_small with flip TTA) on the tiny demo, evaluated."""
    base = tmp_path_factory.mktemp("cv")
    for name, extra in (("cnn", ["model=seed_cnn"]), ("res", ["model=resnet_small", "train.tta=true"])):
        pipeline.run(_cfg(base, f"name={name}", *extra), "train")
        pipeline.run(_cfg(base, f"name={name}", *extra), "evaluate")
    return base


def test_oof_covers_every_training_image_once_and_test_is_the_fold_average(members: Path):
    from src.paths import Layout

    lay = Layout(_cfg(members, "name=cnn"))
    frame = pd.read_csv(lay.oof, dtype={"id": str})
    train = pd.read_csv(members / "processed" / "demo" / "train.csv", dtype={"id": str})
    assert frame["id"].is_unique and set(frame["id"]) == set(train["id"]) and len(frame) == 48
    truth = dict(zip(train["id"], train["label"]))
    assert frame["label"].tolist() == [truth[i] for i in frame["id"]]
    expected = dict(zip(train["id"], assign_cv_folds(train["id"], train["label"], K, 0)))
    assert frame["fold"].tolist() == [expected[i] for i in frame["id"]]     # each row's fold is its held-out fold
    for f in range(K):  # the OOF rows of fold f are fold f's model's own validation predictions
        val = pd.read_csv(lay.member_dir / f"fold-{f}" / "predictions" / "val.csv", dtype={"id": str})
        part = frame[frame["fold"] == f]
        assert part["id"].tolist() == val["id"].tolist()
        np.testing.assert_array_equal(part["p_dog"].to_numpy(), val["p_dog"].to_numpy())
    tests = [pd.read_csv(lay.member_dir / f"fold-{f}" / "predictions" / "test.csv") for f in range(K)]
    averaged = pd.read_csv(lay.oof_test)
    assert averaged["id"].tolist() == list(range(1, 13))
    np.testing.assert_allclose(averaged["p_dog"], np.mean([t["p_dog"] for t in tests], axis=0), rtol=1e-12)
    metrics = read_json(members / "metrics" / "demo" / "cnn.json")
    assert metrics["n_val"] == 48 and metrics["folds"] == K and len(metrics["fold_val_log_loss"]) == K
    assert metrics["fold_val_log_loss_mean"] == pytest.approx(np.mean(metrics["fold_val_log_loss"]))
    from sklearn.metrics import log_loss

    vp = pd.read_csv(members / "plots" / "demo" / "cnn" / "val_predictions.csv")
    assert metrics["val_log_loss"] == pytest.approx(log_loss(vp["label"], vp["probability"], labels=[0, 1]), rel=1e-9)


def test_oof_error_grid_shows_every_fold_s_images_with_their_fold(members: Path, monkeypatch):
    from src import error_analysis, manifests, plots
    from src.paths import Layout

    lay = Layout(_cfg(members, "name=cnn"))
    assert (lay.plots / "most_wrong.png").is_file() and (lay.plots / "confused_pairs.png").is_file()  # evaluate drew
    drawn = {}
    monkeypatch.setattr(plots, "image_rows", lambda rows, title, path, **kw: drawn.__setitem__(path.name, rows))
    frame = pd.read_csv(lay.oof, dtype={"id": str})
    y, p = frame["label"].to_numpy(), frame["p_dog"].to_numpy()
    error_analysis.draw(lay, manifests.load(lay), frame, y, p, ["cat", "dog"], 48, 2)
    cells = [(im, c) for _, ims, cs in drawn["most_wrong.png"] for im, c in zip(ims, cs)]
    assert len(cells) == int(((p >= 0.5) != y).sum()) > 0  # every OOF error, whichever fold held it out
    arr = np.load(members / "processed" / "demo" / "train.npy")
    index = pd.read_csv(members / "processed" / "demo" / "train.csv", dtype={"id": str}).set_index("id")["index"]
    folds = dict(zip(frame["id"], frame["fold"]))
    for image, caption in cells:
        id_ = caption.split(" ")[0]
        assert caption.split("\n")[0] == f"{id_} (fold {folds[id_]})"
        np.testing.assert_array_equal(image, arr[index[id_]])


def test_blend_beats_or_matches_its_members_and_writes_a_valid_csv(members: Path):
    from src.paths import Layout

    res_files = sorted((Layout(_cfg(members, "name=res")).member_dir).glob("fold-*/predictions/*.csv"))
    before = {f: f.stat().st_mtime_ns for f in res_files}
    lost = Layout(_cfg(members, "name=cnn", "cv.fold=1")).predictions("val")
    held_out = pd.read_csv(lost, dtype={"id": str})["id"].tolist()
    lost.unlink()  # remade by the blend from fold 1's model, on fold 1's own held-out images
    result = pipeline.run(_cfg(members, "blend.members=[cnn,res]", "blend.name=both"), "blend")
    assert pd.read_csv(lost, dtype={"id": str})["id"].tolist() == held_out
    # res was trained (and evaluated) with TTA, the blend's config has none: its members' predictions are judged
    # by the member's own config, so nothing of res is predicted again
    assert {f: f.stat().st_mtime_ns for f in res_files} == before
    assert set(result["members"]) == {"cnn", "res"} and sum(result["weights"].values()) == pytest.approx(1)
    assert result["val_log_loss"] <= min(m["val_log_loss"] for m in result["members"].values()) + 1e-6
    sub = pd.read_csv(members / "submissions" / "demo-both.csv")
    assert sub["id"].tolist() == list(range(1, 13)) and sub["label"].between(result["clip"], 1 - result["clip"]).all()
    record = read_json(members / "submissions" / "demo-both.json")
    assert set(record["members"]) == {"cnn", "res"} and record["sha256"] == file_sha256(members / "submissions" / "demo-both.csv")
    mean = pipeline.run(_cfg(members, "blend.members=[cnn,res]", "blend.name=avg", "blend.weights=mean"), "blend")
    assert mean["weights"] == {"cnn": 0.5, "res": 0.5}


def _copy_member(src: Path, dst: Path, name: str, new: str) -> None:
    for part in ("models", "predictions"):
        shutil.copytree(src / part / "demo" / name, dst / part / "demo" / new)


@pytest.mark.parametrize("fault, words", [
    ("no_oof", ["'ghost'", "no out-of-fold predictions"]),
    ("other_seed", ["'bad'", "split"]),
    ("other_ids", ["'bad'", "other OOF images"]),
    ("other_dataset", ["'bad'", "dataset"]),
    ("twice", ["twice"]),
    ("unknown_run", ["0123456789abcdef0123456789abcdef", "not in the store"]),
])
def test_blend_refuses_mismatched_members_with_one_line(members: Path, tmp_path: Path, fault: str, words: list[str]):
    import json

    base = tmp_path / "b"
    shutil.copytree(members, base)
    _copy_member(members, base, "res", "bad")
    meta_file = base / "predictions" / "demo" / "bad" / "oof.json"
    meta = json.loads(meta_file.read_text())
    csv = base / "predictions" / "demo" / "bad" / "oof.csv"
    names = "[cnn,bad]"
    extra: list[str] = []
    if fault == "no_oof":
        names = "[cnn,ghost]"
    elif fault == "other_seed":
        meta["scheme"]["seed"] = 7
    elif fault == "other_ids":
        frame = pd.read_csv(csv, dtype={"id": str})
        frame.iloc[:-1].to_csv(csv, index=False)
    elif fault == "other_dataset":
        meta["dataset"] = "cifar10"
    elif fault == "twice":
        names = "[cnn,cnn]"
    elif fault == "unknown_run":
        names = "[cnn,0123456789abcdef0123456789abcdef]"
        extra = ["tracking.enabled=true"]
    meta["csv_sha256"] = file_sha256(csv)
    meta_file.write_text(json.dumps(meta))
    (base / "models" / "demo" / "bad" / "member.json").unlink()  # as evaluated files: read as they are
    with pytest.raises(UserError) as e:
        pipeline.run(_cfg(base, f"blend.members={names}", *extra), "blend")
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_lost_fold_model_names_the_fold_and_the_command(members: Path, tmp_path: Path):
    """Members trained outside a command line (these, composed in process) have no command in member.json: the
    line gives the default config's command and says where the member's own overrides are."""
    base = tmp_path / "m"
    shutil.copytree(members, base)
    (base / "models" / "demo" / "cnn" / "fold-1" / "model.keras").unlink()
    with pytest.raises(UserError) as e:
        oof.assemble(_cfg(base, "name=cnn", "model=seed_cnn"))
    assert str(e.value).startswith(f"fold 1 of cnn has no model ({base}/models/demo/cnn/fold-1/model.keras); train "
                                   f"it: python -m src.train dataset=demo name=cnn cv.folds={K} cv.fold=1 plus the "
                                   "overrides that trained cnn (its MLflow runs' tag hydra.overrides)")


def test_training_every_fold_again_keeps_the_finished_ones(members: Path, capsys):
    from src.paths import Layout

    lay = Layout(_cfg(members, "name=cnn"))
    before = {f: file_sha256(lay.member_dir / f"fold-{f}" / "model.keras") for f in range(K)}
    lost = lay.member_dir / "fold-0" / "predictions" / "test.csv"
    kept = lost.read_bytes()
    lost.unlink()  # a deleted prediction file is predicted again, not a reason to train the fold again
    capsys.readouterr()
    pipeline.run(_cfg(members, "name=cnn"), "train")
    out = capsys.readouterr().out
    assert out.count("already trained with this config; kept") == K and out.count("predicting again") == 1
    assert {f: file_sha256(lay.member_dir / f"fold-{f}" / "model.keras") for f in range(K)} == before
    assert lost.read_bytes() == kept


# ------------------------------------------------------------------ a killed fold, and MLflow
@pytest.mark.slow
def test_killed_fold_resumes_and_finished_folds_stay(tmp_path: Path):
    """SIGKILL while fold 1 trains: fold 0 stays as it was, fold 1 resumes from its checkpoint, fold 2 trains;
    in MLflow one parent run with a FINISHED child per fold."""
    from mlflow.tracking import MlflowClient

    cmd = [sys.executable, "-m", "src.train", *[o for o in TINY if not o.startswith("train.epochs")], "train.epochs=4",
           "train.early_stopping_patience=0", *path_overrides(tmp_path), f"cv.folds={K}", f"hydra.run.dir={tmp_path}/h"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    member = tmp_path / "models" / "demo" / "seed_cnn"
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not (member / "fold-1" / "checkpoint" / "state.json").is_file():
        assert p.poll() is None, p.stdout.read()[-3000:]
        assert time.monotonic() - t0 < 400
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    fold0 = file_sha256(member / "fold-0" / "model.keras")
    assert not (member / "fold-2").exists()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "fold 0 of seed_cnn is already trained with this config; kept" in r.stdout
    assert "resuming after epoch" in r.stdout
    assert file_sha256(member / "fold-0" / "model.keras") == fold0
    assert all((member / f"fold-{f}" / "model.keras").is_file() for f in range(K))
    assert [h["epoch"] for h in read_json(member / "fold-1" / "history.json")] == [1, 2, 3, 4]

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [x for x in runs if x.info.run_name == "cv-seed_cnn"]
    children = sorted((x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda x: x.info.run_name)
    assert [c.info.run_name for c in children] == [f"seed_cnn-fold{f}" for f in range(K)]
    assert all(c.info.status == "FINISHED" and c.data.tags["cv.folds"] == str(K) for c in children)
    assert parent.info.status == "FINISHED" and read_json(member / "member.json")["run_id"] == parent.info.run_id
    trains = [*(o for o in cmd[3:] if not o.startswith("hydra.")), "name=seed_cnn"]  # Hydra's task overrides
    assert read_json(member / "member.json")["train_command"] == trains

    # evaluate attaches the OOF metrics to the parent, and the member as one MLflow Model: its K fold models,
    # predicting what the member's CSV holds; the blend is its own run tagged with its members' runs
    ov = [*TINY, *path_overrides(tmp_path), f"cv.folds={K}"]
    pipeline.run(compose(*ov, "tracking.log_model=true"), "predict")
    parent = client.get_run(parent.info.run_id)
    assert parent.data.metrics["eval.val_log_loss"] == pytest.approx(read_json(tmp_path / "metrics" / "demo" / "seed_cnn.json")["val_log_loss"])
    assert "eval.fold_val_log_loss_mean" in parent.data.metrics
    _check_member_model(client, tmp_path, parent.info.run_id)
    pipeline.run(compose(*ov, "name=second"), "train")
    pipeline.run(compose(*ov, "blend.members=[seed_cnn,second]", "blend.name=pair"), "blend")
    (b,) = [x for x in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if x.info.run_name == "pair"]
    assert b.info.status == "FINISHED" and b.data.tags["blend.members"] == "seed_cnn,second"
    assert b.data.tags["blend.member.seed_cnn.run_id"] == parent.info.run_id
    assert {"submission/demo-pair.csv", "evaluation/pair.json"} <= {a.path for d in ("submission", "evaluation")
                                                                    for a in client.list_artifacts(b.info.run_id, d)}

    # a lost fold model: the one line quotes the command that trains it (this member's own overrides)
    (member / "fold-2" / "model.keras").unlink()
    with pytest.raises(UserError) as e:
        pipeline.run(compose(*ov), "evaluate")
    assert str(e.value).endswith(f"train them first (the command trains the missing folds): python -m src.train "
                                 f"{shlex.join(trains)}")


def _check_member_model(client, base: Path, parent_run: str) -> None:
    import mlflow

    (logged,) = client.search_logged_models([e.experiment_id for e in client.search_experiments()])
    assert logged.source_run_id == parent_run
    mlflow.set_tracking_uri(f"sqlite:///{base}/mlflow.db")
    try:
        model = mlflow.pyfunc.load_model(f"models:/{logged.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    assert len(model.unwrap_python_model().models) == K
    test = pd.read_csv(base / "processed" / "demo" / "test.csv")
    out = model.predict(np.load(base / "processed" / "demo" / "test.npy")[test["index"].to_numpy()])
    submitted = pd.read_csv(base / "submissions" / "demo-seed_cnn.csv").set_index("id").loc[test["id"], "label"]
    np.testing.assert_allclose(out["p_dog"].to_numpy(), submitted.to_numpy(), rtol=1e-6)
