"""evaluate, predict and the submission format (issue 2), on one tiny trained demo model (in process).

The demo test folder holds ids 1..12, so 10, 11, 12 must come after 9 (lexicographic order would be wrong)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, compose, path_overrides
from src.common import UserError, read_json
from src.submission import (SubmissionError, build, choose_clip, clip_probabilities, kaggle_log_loss, validate,
                            write)

pytest.importorskip("tensorflow")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _cfg(base: Path, *extra: str):
    return compose(*TINY, *path_overrides(base), "tracking.enabled=false", *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from src.train import train

    base = tmp_path_factory.mktemp("stages")
    train(_cfg(base))
    return base


def _model_probs(base: Path, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The manifest of a split and the trained model's raw P(dog) for its rows, computed here independently."""
    import keras

    from src.models import CUSTOM_OBJECTS

    proc = base / "processed" / "demo"
    model = keras.saving.load_model(base / "models" / "demo" / "seed_cnn" / "model.keras", custom_objects=CUSTOM_OBJECTS)
    if split == "val":
        df = pd.read_csv(proc / "train.csv", dtype={"id": str}).query("fold == 'val'").reset_index(drop=True)
        arr = np.load(proc / "train.npy")
    else:
        df = pd.read_csv(proc / "test.csv")
        arr = np.load(proc / "test.npy")
    p = model.predict(arr[df["index"].to_numpy()], verbose=0)[:, 0].astype(np.float64)
    return df, p


def test_val_log_loss_is_sklearns_on_the_submitted_probabilities(trained: Path):
    from src.evaluate import evaluate

    metrics = evaluate(_cfg(trained))
    assert read_json(trained / "metrics" / "demo" / "seed_cnn.json") == pytest.approx(metrics)
    clip = metrics["clip"]
    vp = pd.read_csv(trained / "plots" / "demo" / "seed_cnn" / "val_predictions.csv", dtype={"id": str})
    val, raw_p = _model_probs(trained, "val")
    assert vp["id"].tolist() == val["id"].tolist() and len(vp) == metrics["n_val"] == 10
    assert vp["label"].tolist() == val["label"].tolist()
    p = vp["probability"].to_numpy()
    # val_predictions.csv holds exactly the clipped probabilities a submission would hold
    np.testing.assert_allclose(p, np.clip(raw_p, clip, 1 - clip), atol=1e-6)
    assert ((p >= clip) & (p <= 1 - clip)).all()
    assert metrics["val_log_loss"] == pytest.approx(sklearn_metrics.log_loss(vp["label"], p, labels=[0, 1]), rel=1e-9)
    assert metrics["val_log_loss_unclipped"] == pytest.approx(
        sklearn_metrics.log_loss(val["label"], np.clip(raw_p, 1e-15, 1 - 1e-15), labels=[0, 1]), rel=1e-5)
    assert metrics["val_accuracy"] == pytest.approx(float(((p >= 0.5) == vp["label"]).mean()))
    # clip=auto chose the candidate with the lowest validation log loss
    cfg = _cfg(trained)
    assert clip in list(cfg.evaluate.clip_candidates)
    for c in cfg.evaluate.clip_candidates:
        assert sklearn_metrics.log_loss(val["label"], np.clip(raw_p, c, 1 - c), labels=[0, 1]) >= metrics["val_log_loss"] - 1e-6
    assert (trained / "plots" / "demo" / "seed_cnn" / "roc.png").is_file()


def test_submission_is_what_kaggle_accepts(trained: Path):
    from src.evaluate import evaluate
    from src.predict import predict

    evaluate(_cfg(trained))
    record = predict(_cfg(trained))
    csv = trained / "submissions" / "demo-seed_cnn.csv"
    assert Path(record["csv"]) == csv and record["rows"] == 12
    lines = csv.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 13
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    assert ids == list(range(1, 13))  # numeric order: ..., 9, 10, 11, 12
    sample = pd.read_csv(trained / "raw" / "demo" / "sample_submission.csv")
    assert sorted(sample["id"]) == ids
    sub = pd.read_csv(csv)
    clip = read_json(trained / "metrics" / "demo" / "seed_cnn.json")["clip"]
    assert record["clip"] == clip
    assert sub["label"].between(clip, 1 - clip).all()
    # each row holds the prediction for its own image (explicit id mapping, no positional slip)
    test, raw_p = _model_probs(trained, "test")
    expected = dict(zip(test["id"], np.clip(raw_p, clip, 1 - clip)))
    for i, v in zip(sub["id"], sub["label"]):
        assert v == pytest.approx(expected[i], abs=1e-6), i


def test_fixed_clip_is_used_for_metrics_and_submission(trained: Path):
    from src.evaluate import evaluate
    from src.predict import predict

    assert evaluate(_cfg(trained, "evaluate.clip=0.02"))["clip"] == 0.02
    assert predict(_cfg(trained, "evaluate.clip=0.02"))["clip"] == 0.02
    assert pd.read_csv(trained / "submissions" / "demo-seed_cnn.csv")["label"].between(0.02, 0.98).all()
    # a clip that must bite: every probability lands in [0.49, 0.51]
    m = evaluate(_cfg(trained, "evaluate.clip=0.49"))
    vp = pd.read_csv(trained / "plots" / "demo" / "seed_cnn" / "val_predictions.csv")
    assert vp["probability"].between(0.49, 0.51).all()
    assert m["val_log_loss"] == pytest.approx(sklearn_metrics.log_loss(vp["label"], vp["probability"], labels=[0, 1]))
    before = (trained / "metrics" / "demo" / "seed_cnn.json").stat().st_mtime_ns
    predict(_cfg(trained, "evaluate.clip=0.49"))  # the same settings: predict uses evaluate's recorded clip
    assert (trained / "metrics" / "demo" / "seed_cnn.json").stat().st_mtime_ns == before
    assert pd.read_csv(trained / "submissions" / "demo-seed_cnn.csv")["label"].between(0.49, 0.51).all()
    record = predict(_cfg(trained))  # other settings (clip=auto): predict evaluates again first
    assert record["clip"] == read_json(trained / "metrics" / "demo" / "seed_cnn.json")["clip"] != 0.49


def test_temperature_is_chosen_on_validation_and_used_for_the_submission(trained: Path):
    from src.evaluate import evaluate
    from src.predict import predict
    from src.submission import apply_temperature

    m = evaluate(_cfg(trained, "evaluate.temperature=auto", "evaluate.clip=0.001"))
    t = m["temperature"]
    val, raw_p = _model_probs(trained, "val")
    y = val["label"].to_numpy()

    def loss(temp):
        q = np.clip(raw_p, 1e-15, 1 - 1e-15)
        calibrated = 1 / (1 + np.exp(-np.log(q / (1 - q)) / temp))  # computed here independently
        return sklearn_metrics.log_loss(y, np.clip(calibrated, 0.001, 0.999), labels=[0, 1])

    assert m["val_log_loss"] == pytest.approx(loss(t), rel=1e-5)  # the reported loss is on what is submitted
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    assert loss(t) <= min(loss(g) for g in grid) + 1e-4               # and t is the best temperature
    assert m["val_log_loss"] <= m["val_log_loss_model"] + 1e-9 or t == 1.0
    record = predict(_cfg(trained, "evaluate.temperature=auto", "evaluate.clip=0.001"))
    assert record["temperature"] == t
    sub = pd.read_csv(trained / "submissions" / "demo-seed_cnn.csv")
    test, raw_test = _model_probs(trained, "test")
    np.testing.assert_allclose(sub["label"].to_numpy(), np.clip(apply_temperature(raw_test, t), 0.001, 0.999), atol=1e-6)


def test_temperature_helpers():
    from src.submission import apply_temperature, choose_temperature

    p = np.array([0.9, 0.2, 0.6])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p)
    np.testing.assert_allclose(apply_temperature(p, 2.0), 1 / (1 + np.exp(-np.log(p / (1 - p)) / 2)))
    rows = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    soft = apply_temperature(rows, 3.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_allclose(soft, np.exp(np.log(rows) / 3) / np.exp(np.log(rows) / 3).sum(axis=1, keepdims=True))
    rng = np.random.default_rng(0)  # an over-confident model: the right temperature is > 1
    y = rng.integers(0, 2, 2000)
    logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.5, 2000)
    overconfident = 1 / (1 + np.exp(-3 * logit))
    t = choose_temperature(y, overconfident)
    assert 2.0 < t < 4.5
    assert kaggle_log_loss(y, apply_temperature(overconfident, t)) < kaggle_log_loss(y, overconfident) - 0.1


def test_mismatching_sample_submission_is_refused(trained: Path, tmp_path: Path):
    from src.predict import predict

    for sub in ("raw", "processed", "models", "metrics"):
        shutil.copytree(trained / sub, tmp_path / sub)
    sample = tmp_path / "raw" / "demo" / "sample_submission.csv"
    sample.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in range(1, 12)))  # id 12 missing
    with pytest.raises(UserError, match="sample_submission"):
        predict(_cfg(tmp_path))
    assert not (tmp_path / "submissions" / "demo-seed_cnn.csv").exists()


# ------------------------------------------------------------------ submission module
def test_build_maps_each_prediction_to_its_id_in_numeric_order():
    ids = np.array([10, 2, 1, 11, 9])
    p = np.array([0.10, 0.02, 0.01, 0.11, 0.09])
    df = build(ids, p, ["cat", "dog"], "probability")
    assert df["id"].tolist() == [1, 2, 9, 10, 11]
    np.testing.assert_allclose(df["label"], [0.01, 0.02, 0.09, 0.10, 0.11])
    df = build(ids, np.eye(3)[[2, 0, 1, 1, 0]], ["a", "b", "c"], "class_name")
    assert df["label"].tolist() == ["b", "a", "a", "c", "b"]  # ids 1, 2, 9, 10, 11


@pytest.mark.parametrize("df, kind, why", [
    (pd.DataFrame({"id": [1, 2], "p": [0.5, 0.5]}), "probability", "columns"),
    (pd.DataFrame({"id": [1, 1], "label": [0.5, 0.5]}), "probability", "more than once"),
    (pd.DataFrame({"id": [1, 10, 2], "label": [0.5, 0.5, 0.5]}), "probability", "numeric order"),
    (pd.DataFrame({"id": ["1", "2.5"], "label": [0.5, 0.5]}), "probability", "not an integer"),
    (pd.DataFrame({"id": [1, 2], "label": [0.5, 0.001]}), "probability", "outside"),
    (pd.DataFrame({"id": [1, 2], "label": [0.5, np.nan]}), "probability", "finite"),
    (pd.DataFrame({"id": [1, 2], "label": ["cat", "wolf"]}), "class_name", "not a class name"),
])
def test_validate_refuses_what_kaggle_would_reject(df, kind, why):
    with pytest.raises(SubmissionError, match=why):
        validate(df, kind, ["cat", "dog"], clip=0.005)


def test_validate_checks_ids_against_the_sample(tmp_path: Path):
    df = pd.DataFrame({"id": [1, 2, 3], "label": [0.5, 0.5, 0.5]})
    (tmp_path / "ok.csv").write_text("id,label\n3,0.5\n1,0.5\n2,0.5\n")
    validate(df, "probability", ["cat", "dog"], sample=tmp_path / "ok.csv")
    (tmp_path / "more.csv").write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n")
    with pytest.raises(SubmissionError, match="more.csv"):
        validate(df, "probability", ["cat", "dog"], sample=tmp_path / "more.csv")
    (tmp_path / "other.csv").write_text("id,label\n1,0.5\n2,0.5\n4,0.5\n")
    with pytest.raises(SubmissionError, match="differ"):
        validate(df, "probability", ["cat", "dog"], sample=tmp_path / "other.csv")


def test_written_csv_reads_back_exactly(tmp_path: Path):
    p = np.random.default_rng(0).uniform(0.005, 0.995, 12)
    df = build(np.arange(12, 0, -1), p, ["cat", "dog"], "probability")
    back = pd.read_csv(write(df, tmp_path / "s.csv"))
    assert back["id"].tolist() == list(range(1, 13))
    np.testing.assert_array_equal(back["label"].to_numpy(), p[::-1])


def test_log_loss_and_clip_helpers_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    p = rng.uniform(0, 1, 50)
    p[:3] = [0.0, 1.0, 1e-9]
    for c in (1e-15, 0.005, 0.05):
        q = clip_probabilities(p, c)
        assert q.min() >= c and q.max() <= 1 - c
        assert kaggle_log_loss(y, q) == pytest.approx(sklearn_metrics.log_loss(y, q, labels=[0, 1]))
    ym = rng.integers(0, 4, 40)
    pm = rng.dirichlet(np.ones(4), 40)
    q = clip_probabilities(pm, 0.01)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    assert kaggle_log_loss(ym, q) == pytest.approx(sklearn_metrics.log_loss(ym, q, labels=[0, 1, 2, 3]))
    best = choose_clip(y, p, [1e-15, 0.01, 0.1, 0.3])
    losses = {c: kaggle_log_loss(y, clip_probabilities(p, c)) for c in [1e-15, 0.01, 0.1, 0.3]}
    assert losses[best] == min(losses.values())


def test_predict_reevaluates_a_retrained_model(trained: Path, tmp_path: Path, capsys):
    """Tracking off (no run ids): metrics left by an earlier model must not lend their clip to a new one."""
    from src.evaluate import evaluate
    from src.predict import predict
    from src.train import train

    for sub in ("raw", "processed"):
        shutil.copytree(trained / sub, tmp_path / sub)
    train(_cfg(tmp_path))
    assert evaluate(_cfg(tmp_path, "evaluate.clip=0.49"))["clip"] == 0.49
    train(_cfg(tmp_path, "seed=7"))  # a new model under the same name
    capsys.readouterr()
    record = predict(_cfg(tmp_path))
    assert "running evaluate first" in capsys.readouterr().out
    assert record["clip"] in list(_cfg(tmp_path).evaluate.clip_candidates)
