"""CIFAR-10 through every stage, on tiny CIFAR-shaped data: 32x32 PNGs, trainLabels.csv with class names (ids shuffled
across classes), test/1..12.png, sampleSubmission.csv; a narrow resnet_cifar, one epoch. The dataset picks its own
model and size; prepare keeps the PNGs' own pixels and maps every label back to its class name; train writes ten-
class prediction files; evaluate scores them (sklearn's log loss) with a confusion matrix; predict writes one class
name per test id, the model's argmax. Bad labels CSVs and 7z archives: test_rawdata.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import checked, compose, path_overrides
from imagegen import CIFAR_CLASSES, cifar
from src import prepare

N_PER_CLASS, N_TEST = 6, 12


def _cfg(base: Path, *extra: str, stage: str = "train"):
    return checked(stage, "dataset=cifar10", "model.widths=[8,16,16,32]", "train.epochs=1", "train.batch_size=16",
                   "dataset.val_fraction=0.34", "prepare.workers=1", "tracking.enabled=false",
                   *path_overrides(base), *extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("cifar")
    _, truth = cifar(base / "raw" / "cifar10", n_per_class=N_PER_CLASS, n_test=N_TEST)
    out = prepare.run(_cfg(base, stage="prepare")).processed
    return base, out, truth


def test_config_picks_cifar_defaults():
    cfg = compose("dataset=cifar10")
    assert cfg.model.name == cfg.model.arch == "resnet_cifar" and cfg.dataset.image_size == 32 and cfg.dataset.submission == "class_name"
    assert list(cfg.dataset.classes) == CIFAR_CLASSES
    assert compose("dataset=cifar10", "model=seed_cnn").model.name == "seed_cnn"  # still overridable


def test_prepare_keeps_32px_and_class_names(data):
    base, out, truth = data
    raw = base / "raw" / "cifar10"
    x, xt = np.load(out / "train.npy"), np.load(out / "test.npy")
    assert x.shape == (10 * N_PER_CLASS, 32, 32, 3) and xt.shape == (N_TEST, 32, 32, 3)
    assert json.loads((out / "classes.json").read_text()) == CIFAR_CLASSES  # config order, not sorted or seen order
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "path", "label", "class", "fold", "index"]
    # no resampling at 32x32: the stored pixels are the PNG's pixels
    for _, r in train.iterrows():
        np.testing.assert_array_equal(x[r["index"]], np.asarray(Image.open(raw / r["path"]).convert("RGB")))
    test = pd.read_csv(out / "test.csv")
    assert test["id"].tolist() == list(range(1, N_TEST + 1))
    for _, r in test.iterrows():
        np.testing.assert_array_equal(xt[r["index"]], np.asarray(Image.open(raw / "test" / f"{r['id']}.png")))
    # stratified: round(0.34 * 6) = 2 validation images in every class
    assert train.query("fold == 'val'")["class"].value_counts().to_dict() == {c: 2 for c in CIFAR_CLASSES}


def test_label_index_maps_back_to_the_true_class(data):
    base, out, truth = data
    classes = json.loads((out / "classes.json").read_text())
    labels_csv = pd.read_csv(base / "raw" / "cifar10" / "trainLabels.csv")
    name_of_7 = labels_csv.set_index("id").loc[7, "label"]
    train = pd.read_csv(out / "train.csv", dtype={"id": str}).set_index("id")
    assert classes[train.loc["7", "label"]] == name_of_7 == truth[7]
    for i, cls in truth.items():
        assert train.loc[str(i), "class"] == cls and classes[train.loc[str(i), "label"]] == cls


def test_train_evaluate_predict(data):
    import keras

    import src.models  # noqa: F401  (registers the custom layers: the model loads without custom_objects)
    from src import evaluate, predict, train

    base, out, truth = data
    cfg = _cfg(base)
    summary = train.run(cfg)
    assert summary["epochs_run"] == 1
    model_dir = base / "models" / "cifar10" / "resnet_cifar"
    model = keras.saving.load_model(model_dir / "model.keras")
    assert model.name == "resnet_cifar" and model.output_shape == (None, 10)
    xt, test = np.load(out / "test.npy"), pd.read_csv(out / "test.csv")
    p = model.predict(xt[test["index"].to_numpy()], verbose=0)

    # the prediction files: one column per class, rows of probabilities, the model's own
    columns = [f"p_{c}" for c in CIFAR_CLASSES]
    val_csv = pd.read_csv(model_dir / "predictions" / "val.csv", dtype={"id": str})
    test_csv = pd.read_csv(model_dir / "predictions" / "test.csv")
    assert list(val_csv.columns) == ["id", "label", *columns] and list(test_csv.columns) == ["id", "ok", *columns]
    assert len(val_csv) == 20 and test_csv["id"].tolist() == list(range(1, N_TEST + 1))
    np.testing.assert_allclose(test_csv[columns].to_numpy(), p, atol=1e-6)
    np.testing.assert_allclose(val_csv[columns].sum(axis=1), 1.0, atol=1e-5)

    metrics = evaluate.run(cfg)
    assert list(metrics["per_class_accuracy"]) == CIFAR_CLASSES
    plots = base / "plots" / "cifar10" / "resnet_cifar"
    cm = json.loads((plots / "confusion_matrix.json").read_text())
    assert cm["classes"] == CIFAR_CLASSES
    matrix = np.array(cm["matrix"])
    assert matrix.shape == (10, 10) and (matrix.sum(axis=1) == 2).all()
    assert metrics["val_accuracy"] == pytest.approx(np.trace(matrix) / 20)
    assert (plots / "confusion_matrix.png").is_file()
    assert (plots / "most_wrong.png").is_file() and (plots / "confused_pairs.png").is_file()  # the images it gets wrong
    vp = pd.read_csv(plots / "val_predictions.csv")
    probs = vp[[f"p_{c}" for c in CIFAR_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert list(vp.columns[:3]) == ["id", "label", "predicted"] and (vp["predicted"] == probs.argmax(axis=1)).all()
    from sklearn.metrics import log_loss

    assert metrics["val_log_loss"] == pytest.approx(log_loss(vp["label"], probs, labels=list(range(10))), rel=1e-9)

    record = predict.run(cfg)
    csv = base / "submissions" / "cifar10-resnet_cifar.csv"
    assert record["rows"] == N_TEST
    assert csv.read_text().splitlines()[0] == "id,label"
    sub = pd.read_csv(csv)
    assert sub["id"].tolist() == list(range(1, N_TEST + 1))  # 10, 11, 12 after 9
    assert sub["label"].isin(CIFAR_CLASSES).all()
    expected = dict(zip(test["id"], np.asarray(CIFAR_CLASSES)[p.argmax(axis=1)]))
    assert sub.set_index("id")["label"].to_dict() == expected
