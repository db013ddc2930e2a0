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


# ------------------------------------------------------------------ error analysis as pictures
def test_most_wrong_and_confused_pairs_select_like_an_independent_count():
    from sklearn.metrics import confusion_matrix

    from src import error_analysis

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    p = rng.dirichlet(np.ones(5), 300)
    p[np.arange(300)[:150], y[:150]] += 2  # half of them right
    p /= p.sum(axis=1, keepdims=True)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    worst = error_analysis.most_wrong(y, p, 10)
    assert len(worst) == 10 and set(worst) <= set(wrong)
    given = p[np.arange(300), y]
    assert given[worst].tolist() == sorted(given[wrong])[:10]  # the least probability for the true class first
    cm = confusion_matrix(y, pred, labels=range(5))
    np.fill_diagonal(cm, 0)
    pairs = error_analysis.confused_pairs(y, p, 5, 4, per_pair=3)
    assert [c.count for c in pairs] == sorted(cm.reshape(-1), reverse=True)[:4]
    for c in pairs:
        assert cm[c.true, c.predicted] == c.count and len(c.rows) == min(3, c.count)
        assert (y[c.rows] == c.true).all() and (pred[c.rows] == c.predicted).all()
        others = np.flatnonzero((y == c.true) & (pred == c.predicted))
        assert p[c.rows, c.predicted].tolist() == sorted(p[others, c.predicted], reverse=True)[:3]
    # two classes: P(class 1), wrong at >= 0.5 like metrics.accuracy; every right answer: nothing to draw
    yb, pb = np.array([0, 0, 1, 1, 0]), np.array([0.9, 0.6, 0.2, 0.7, 0.5])
    assert error_analysis.most_wrong(yb, pb, 10).tolist() == [0, 2, 1, 4]
    assert [(c.true, c.predicted, c.count) for c in error_analysis.confused_pairs(yb, pb, 2, 6)] == [(0, 1, 3), (1, 0, 1)]
    assert error_analysis.most_wrong(yb, yb.astype(float), 10).size == 0
    assert error_analysis.confused_pairs(yb, yb.astype(float), 2, 6) == []


def test_evaluate_draws_the_validation_images_it_gets_most_confidently_wrong(trained: Path, monkeypatch):
    from PIL import Image

    from src import plots

    drawn = {}
    real = plots.image_rows
    monkeypatch.setattr(plots, "image_rows", lambda rows, title, path, **kw: (drawn.__setitem__(path.name, rows),
                                                                              real(rows, title, path, **kw)))
    evaluate.run(_cfg(trained, "evaluate.error_grid=3"))
    folder = trained / "plots" / "demo" / "seed_cnn"
    vp = pd.read_csv(folder / "val_predictions.csv", dtype={"id": str})
    y, p = vp["label"].to_numpy(), vp["probability"].to_numpy()
    given = np.where(y == 1, p, 1 - p)  # the probability of the true class, what the submission holds
    wrong = np.flatnonzero((p >= 0.5) != y)
    assert len(wrong) >= 2, "the tiny model gets too few wrong for this test to mean anything"
    expected = vp["id"].to_numpy()[wrong[np.argsort(given[wrong], kind="stable")]][:3].tolist()
    captions = [c for _, _, cs in drawn["most_wrong.png"] for c in cs]
    images = [im for _, ims, _ in drawn["most_wrong.png"] for im in ims]
    assert [c.split("\n")[0] for c in captions] == expected
    # each image is that id's prepared image (train.npy row named by the manifest), each caption its true class
    # and the predicted class's probability
    manifest = pd.read_csv(trained / "processed" / "demo" / "train.csv", dtype={"id": str}).set_index("id")
    arr = np.load(trained / "processed" / "demo" / "train.npy")
    classes = ["cat", "dog"]
    for id_, image, caption in zip(expected, images, captions):
        np.testing.assert_array_equal(image, arr[manifest.loc[id_, "index"]])
        i = int(np.flatnonzero(vp["id"].to_numpy() == id_)[0])
        top = max(p[i], 1 - p[i])
        assert caption.split("\n")[1:] == [f"true {classes[y[i]]}", f"{classes[1 - y[i]]} {top:.3f}"]
    # confused pairs, two classes: cat -> dog and dog -> cat, as many as there are of each
    pairs = {label.split("\n")[0]: (label, len(ims)) for label, ims, _ in drawn["confused_pairs.png"]}
    for t, name in ((0, "cat -> dog"), (1, "dog -> cat")):
        n = int(((y == t) & ((p >= 0.5) != y)).sum())
        assert (pairs[name] == (f"{name}\n{n} images", min(n, 8))) if n else name not in pairs
    for name in ("most_wrong.png", "confused_pairs.png"):
        with Image.open(folder / name) as im:
            assert im.format == "PNG" and im.width > 300
