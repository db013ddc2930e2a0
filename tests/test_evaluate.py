"""The evaluate stage (src/evaluate.py): the competition's metric on exactly the probabilities a submission holds.
val_log_loss is sklearn's log loss of val_predictions.csv, which holds the model's validation probabilities after
the temperature and the clip; clip=auto and temperature=auto choose the best on validation and predict uses what
evaluate chose; fixed values are used as given. metrics/<dataset>/<name>.json records the settings, the model's
sha256 and the validation predictions' sha256, and is current only while all three still hold. On one tiny trained
demo model (shared, copied); in process.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import checked, copy_run, demo_overrides, model_probs
from src import evaluate, inference, pipeline
from src.files import file_sha256, read_json
from src.paths import Layout

pytest.importorskip("tensorflow")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.fixture(scope="module")
def trained(demo_trained: Path, tmp_path_factory) -> Path:
    return copy_run(demo_trained, tmp_path_factory.mktemp("evaluate"))


def _cfg(base: Path, *extra: str):
    return checked("evaluate", *demo_overrides(base, *extra))


def test_val_log_loss_is_sklearns_on_the_submitted_probabilities(trained: Path):
    cfg = _cfg(trained)
    metrics = evaluate.run(cfg)
    lay = Layout(cfg)
    assert read_json(lay.metrics) == pytest.approx(metrics)
    assert lay.metrics == trained / "metrics" / "demo" / "seed_cnn.json"
    clip = metrics["clip"]
    vp = pd.read_csv(trained / "plots" / "demo" / "seed_cnn" / "val_predictions.csv", dtype={"id": str})
    val, raw_p = model_probs(trained, "val")
    assert list(vp.columns) == ["id", "label", "probability"]
    assert vp["id"].tolist() == val["id"].tolist() and len(vp) == metrics["n_val"] == 10
    assert vp["label"].tolist() == val["label"].tolist()
    p = vp["probability"].to_numpy()
    # val_predictions.csv holds exactly the clipped probabilities a submission would hold (temperature 1: off)
    assert metrics["temperature"] == 1.0
    np.testing.assert_allclose(p, np.clip(raw_p, clip, 1 - clip), atol=1e-6)
    assert ((p >= clip) & (p <= 1 - clip)).all()
    assert metrics["val_log_loss"] == pytest.approx(sklearn_metrics.log_loss(vp["label"], p, labels=[0, 1]), rel=1e-9)
    assert metrics["val_log_loss_unclipped"] == pytest.approx(
        sklearn_metrics.log_loss(val["label"], np.clip(raw_p, 1e-15, 1 - 1e-15), labels=[0, 1]), rel=1e-5)
    assert metrics["val_log_loss_model"] == pytest.approx(metrics["val_log_loss_unclipped"], rel=1e-9)
    assert metrics["val_accuracy"] == pytest.approx(float(((p >= 0.5) == vp["label"]).mean()))
    assert metrics["val_roc_auc"] == pytest.approx(sklearn_metrics.roc_auc_score(vp["label"], p))
    # clip=auto chose the candidate with the lowest validation log loss
    assert clip in list(cfg.evaluate.clip_candidates)
    for c in cfg.evaluate.clip_candidates:
        assert sklearn_metrics.log_loss(val["label"], np.clip(raw_p, c, 1 - c), labels=[0, 1]) >= metrics["val_log_loss"] - 1e-6
    # what the numbers belong to
    assert metrics["model_sha256"] == file_sha256(lay.model)
    assert metrics["val_predictions_sha256"] == file_sha256(lay.predictions("val"))
    candidates = ", ".join(str(float(c)) for c in cfg.evaluate.clip_candidates)
    assert metrics["settings"] == f"clip=auto[{candidates}] temperature=1.0 tta=False" and metrics["tta"] is False
    assert metrics["metric"] == "log_loss" and metrics["run_id"] is None
    assert (trained / "plots" / "demo" / "seed_cnn" / "roc.png").is_file()
    assert (trained / "plots" / "demo" / "seed_cnn" / "calibration.png").is_file()


def test_fixed_clip_is_used_for_metrics_and_submission(trained: Path):
    assert evaluate.run(_cfg(trained, "evaluate.clip=0.02"))["clip"] == 0.02
    assert pipeline.run(_cfg(trained, "evaluate.clip=0.02"), "predict")["clip"] == 0.02
    assert pd.read_csv(trained / "submissions" / "demo-seed_cnn.csv")["label"].between(0.02, 0.98).all()
    # a clip that must bite: every probability lands in [0.49, 0.51]
    m = evaluate.run(_cfg(trained, "evaluate.clip=0.49"))
    vp = pd.read_csv(trained / "plots" / "demo" / "seed_cnn" / "val_predictions.csv")
    assert vp["probability"].between(0.49, 0.51).all()
    assert m["val_log_loss"] == pytest.approx(sklearn_metrics.log_loss(vp["label"], vp["probability"], labels=[0, 1]))
    before = (trained / "metrics" / "demo" / "seed_cnn.json").stat().st_mtime_ns
    pipeline.run(_cfg(trained, "evaluate.clip=0.49"), "predict")  # the same settings: evaluate's recorded clip is used
    assert (trained / "metrics" / "demo" / "seed_cnn.json").stat().st_mtime_ns == before
    assert pd.read_csv(trained / "submissions" / "demo-seed_cnn.csv")["label"].between(0.49, 0.51).all()
    record = pipeline.run(_cfg(trained), "predict")  # other settings (clip=auto): evaluate runs again first
    assert record["clip"] == read_json(trained / "metrics" / "demo" / "seed_cnn.json")["clip"] != 0.49


def test_temperature_is_chosen_on_validation_and_used_for_the_submission(trained: Path):
    from src.submission import apply_temperature

    m = evaluate.run(_cfg(trained, "evaluate.temperature=auto", "evaluate.clip=0.001"))
    t = m["temperature"]
    val, raw_p = model_probs(trained, "val")
    y = val["label"].to_numpy()

    def loss(temp):
        q = np.clip(raw_p, 1e-15, 1 - 1e-15)
        calibrated = 1 / (1 + np.exp(-np.log(q / (1 - q)) / temp))  # computed here independently
        return sklearn_metrics.log_loss(y, np.clip(calibrated, 0.001, 0.999), labels=[0, 1])

    assert m["val_log_loss"] == pytest.approx(loss(t), rel=1e-5)  # the reported loss is on what is submitted
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
    assert loss(t) <= min(loss(g) for g in grid) + 1e-4               # and t is the best temperature
    assert m["val_log_loss"] <= m["val_log_loss_model"] + 1e-9 or t == 1.0
    assert m["settings"] == "clip=0.001 temperature=auto tta=False"
    record = pipeline.run(_cfg(trained, "evaluate.temperature=auto", "evaluate.clip=0.001"), "predict")
    assert record["temperature"] == t
    sub = pd.read_csv(trained / "submissions" / "demo-seed_cnn.csv")
    test, raw_test = model_probs(trained, "test")
    np.testing.assert_allclose(sub["label"].to_numpy(), np.clip(apply_temperature(raw_test, t), 0.001, 0.999), atol=1e-6)


def test_metrics_are_current_only_for_their_settings_model_and_predictions(trained: Path):
    cfg = _cfg(trained)
    lay = Layout(cfg)
    evaluate.run(cfg)
    assert evaluate.is_current(cfg)
    assert not evaluate.is_current(_cfg(trained, "evaluate.clip=0.02"))            # other settings
    assert not evaluate.is_current(_cfg(trained, "evaluate.temperature=auto"))
    assert not evaluate.is_current(_cfg(trained, "train.tta=true"))               # other predictions would be scored
    assert not evaluate.is_current(_cfg(trained, "evaluate.clip_candidates=[0.3]"))  # clip=auto: other candidates
    assert evaluate.is_current(_cfg(trained, "train.lr=0.5", "train.batch_size=8"))  # keys that decide nothing here
    assert evaluate.is_current(_cfg(trained, "evaluate.clip=0.02", "evaluate.clip_candidates=[0.3]")) is False
    csv = lay.predictions("val")
    original = csv.read_bytes()
    frame = pd.read_csv(csv, dtype={"id": str})
    frame.loc[0, "p_dog"] = 0.5
    frame.to_csv(csv, index=False)                                                # damaged: remade from the model,
    inference.predictions(cfg, lay, "val")                                        # byte for byte as it was
    assert csv.read_bytes() == original and evaluate.is_current(cfg)
    lay.metrics.unlink()
    assert not evaluate.is_current(cfg)
