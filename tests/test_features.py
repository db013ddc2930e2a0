"""The frozen-feature mode (src/features.py, src/models/features.py) and the course's baselines (model=mlp,
model=pixels): the embedding cache reused across folds and runs and invalidated by a new weights file, the fitted
scikit-learn head exported exactly as Keras layers, predictions from the cache equal to the saved model's from the
images, and each through train, evaluate, predict, cross-validation and a blend like any model. MobileNet at 32x32
with weights files the test writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, checked, model_probs, path_overrides, write_notop_weights
from src import pipeline
from src.files import read_json


def _cfg(base: Path, *extra: str, stage: str = "train"):
    return checked(stage, *TINY, *path_overrides(base), "dataset.image_size=32", *extra)


def _fold_runs(base: Path, parent_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{base}/mlflow.db")
    exp = client.get_experiment_by_name("kagglepipe-demo").experiment_id
    parent = client.search_runs([exp], filter_string=f"attributes.run_name = '{parent_name}'")[0]
    children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, sorted(children, key=lambda r: r.info.run_name)


@pytest.mark.slow
def test_feature_cache_is_reused_across_folds_and_runs_and_a_new_weights_file_invalidates_it(tmp_path: Path, capsys):
    w1 = write_notop_weights(tmp_path / "one.weights.h5", seed=0)
    w2 = write_notop_weights(tmp_path / "two.weights.h5", seed=1)
    model = ["model=features", "model.backbones=[MobileNet,pixels]"]

    # 1. a cross-validated member: fold 0 embeds every labelled image once, fold 1 reuses them
    cfg = _cfg(tmp_path, *model, f"model.weights={w1}", "cv.folds=2", "name=feat_cv")
    pipeline.run(cfg, "train")
    out = capsys.readouterr().out
    assert out.count("extract_mobilenet: embedded 48 train images") == 1, out
    assert out.count("extract_pixels: embedded 48 train images") == 1
    assert out.count("extract_mobilenet: embedded 12 test images") == 1  # fold 0's test predictions; fold 1 reuses
    parent, folds = _fold_runs(tmp_path, "cv-feat_cv")
    assert [r.data.metrics["features_embedded_images"] for r in folds] == [96, 0]
    assert all(r.info.status == "FINISHED" and "val_log_loss" in r.data.metrics for r in folds)

    # the saved model predicts from images exactly what train predicted from the cached embeddings
    fold0 = tmp_path / "models" / "demo" / "feat_cv" / "fold-0"
    _, direct = model_probs(tmp_path, "test", model_file=fold0 / "model.keras")
    written = pd.read_csv(fold0 / "predictions" / "test.csv")
    np.testing.assert_allclose(written["p_dog"], direct, rtol=1e-4, atol=1e-6)

    # evaluate (OOF over both folds) and predict: no embedding, a valid CSV
    pipeline.run(_cfg(tmp_path, *model, f"model.weights={w1}", "cv.folds=2", "name=feat_cv", stage="predict"),
                 "predict")
    out = capsys.readouterr().out
    assert "embedded" not in out and "OOF over 48 training images" in out, out
    csv = pd.read_csv(tmp_path / "submissions" / "demo-feat_cv.csv")
    assert len(csv) == 12 and csv["label"].between(0, 1).all()

    # 2. a new weights file: MobileNet's embeddings are made anew (in their own entry), the pixels' reused
    pipeline.run(_cfg(tmp_path, *model, f"model.weights={w2}", "name=other"), "train")
    out = capsys.readouterr().out
    assert "extract_mobilenet: embedded 48 train images" in out and "extract_pixels: embedded" not in out, out
    entries = sorted(p.name.split("-")[0] for p in (tmp_path / "features" / "demo").iterdir())
    assert entries == ["extract_mobilenet", "extract_mobilenet", "extract_pixels"]
    keys = [read_json(p / "key.json") for p in (tmp_path / "features" / "demo").iterdir()]
    assert len({k["weights"] for k in keys if k["extractor"] == "extract_mobilenet"}) == 2

    # 3. a blend of the features member with the pixels baseline (MLPClassifier head), cross-validated on the same
    # folds
    pix = ["model=pixels", "model.head=mlp", "cv.folds=2", "name=pix_cv"]
    pipeline.run(_cfg(tmp_path, *pix), "train")
    pipeline.run(_cfg(tmp_path, *pix, stage="evaluate"), "evaluate")
    from src import blend

    result = blend.run(_cfg(tmp_path, "blend.members=[feat_cv,pix_cv]", "blend.name=both", stage="blend"))
    assert set(result["weights"]) == {"feat_cv", "pix_cv"} and abs(sum(result["weights"].values()) - 1) < 1e-9
    assert len(pd.read_csv(tmp_path / "submissions" / "demo-both.csv")) == 12


@pytest.mark.parametrize("head", ["logistic", "logistic_cv", "mlp"])
@pytest.mark.parametrize("k", [2, 3])
def test_the_exported_head_is_the_fitted_scikit_learn_model(head: str, k: int):
    """Standardisation folded into the first Dense layer; LogisticRegression's (model.C=auto: LogisticRegressionCV's)
    and MLPClassifier's probabilities."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from src.features import dense_weights
    from src.models.features import classifier

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (120, 7)) * rng.uniform(0.1, 10, 7)
    y = (x @ rng.normal(size=7) > np.median(x @ rng.normal(size=7))).astype(int) if k == 2 else rng.integers(0, k, 120)
    scaler = StandardScaler().fit(x)
    est = {"logistic": LogisticRegression(max_iter=500), "logistic_cv": LogisticRegressionCV(Cs=[0.01, 1], max_iter=500),
           "mlp": MLPClassifier(hidden_layer_sizes=(5, 4), max_iter=300, random_state=0)}[head]
    est.fit(scaler.transform(x), y)
    model = classifier(7, k, [5, 4] if head == "mlp" else [])
    model.set_weights(dense_weights(est, scaler))
    want = est.predict_proba(scaler.transform(x))
    got = np.asarray(model.predict(x.astype("float32"), verbose=0), dtype=np.float64)
    np.testing.assert_allclose(got[:, 0] if k == 2 else got, want[:, 1] if k == 2 else want, atol=2e-5)


def test_the_course_mlp_goes_through_every_stage_into_mlflow(tmp_path: Path):
    """model=mlp (Keras); the scikit-learn heads on pixels go through the stages in the cache test's blend."""
    pipeline.run(_cfg(tmp_path, "model=mlp"), "train")
    result = pipeline.run(_cfg(tmp_path, "model=mlp", stage="predict"), "predict")
    assert len(pd.read_csv(result["csv"])) == 12
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert {"val_log_loss", "best_val_log_loss", "eval.val_log_loss"} <= set(run.data.metrics)


def test_logistic_c_auto_is_chosen_by_cross_validation_on_the_training_rows(capsys):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    from conftest import compose
    from src.features import AUTO_C, fit_head
    from src.models import model_params

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 30))
    y = (x[:, 0] + rng.normal(scale=2.0, size=80) > 0).astype(int)  # noisy: a small C should win
    head = fit_head(model_params(compose("model=pixels", "model.C=auto").model), x, y, 2, 0)
    xs = StandardScaler().fit_transform(x)
    want = LogisticRegressionCV(Cs=AUTO_C, cv=5, scoring="neg_log_loss", max_iter=1000, random_state=0).fit(xs, y)
    assert f"model.C=auto chose C={want.C_[0]:g}" in capsys.readouterr().out and want.C_[0] < 1
    got = np.asarray(head.predict(x.astype("float32"), verbose=0), dtype=np.float64)[:, 0]
    np.testing.assert_allclose(got, want.predict_proba(xs)[:, 1], atol=2e-5)
