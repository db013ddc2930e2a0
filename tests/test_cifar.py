"""CIFAR-10 through the same stages (issue 3), on tiny CIFAR-shaped data: 32x32 PNGs, trainLabels.csv with class
names (ids shuffled across classes), test/1..12.png, sampleSubmission.csv; a narrow resnet_cifar, one epoch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import compose, path_overrides
from imagegen import CIFAR_CLASSES, cifar
from src.common import UserError
from src.prepare import prepare

N_PER_CLASS, N_TEST = 6, 12


def _cfg(base: Path, *extra: str):
    return compose("dataset=cifar10", "model.widths=[8,16,16,32]", "train.epochs=1", "train.batch_size=16",
                   "dataset.val_fraction=0.34", "prepare.workers=1", "tracking.enabled=false",
                   *path_overrides(base), *extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("cifar")
    _, truth = cifar(base / "raw" / "cifar10", n_per_class=N_PER_CLASS, n_test=N_TEST)
    out = prepare(_cfg(base))
    return base, out, truth


def test_config_picks_cifar_defaults():
    cfg = compose("dataset=cifar10")
    assert cfg.model.name == "resnet_cifar" and cfg.dataset.image_size == 32 and cfg.dataset.submission == "class_name"
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

    from src.evaluate import evaluate
    from src.models import CUSTOM_OBJECTS
    from src.predict import predict
    from src.train import train

    base, out, truth = data
    cfg = _cfg(base)
    summary = train(cfg)
    assert summary["epochs_run"] == 1
    model_path = base / "models" / "cifar10" / "resnet_cifar" / "model.keras"
    model = keras.saving.load_model(model_path, custom_objects=CUSTOM_OBJECTS)
    assert model.name == "resnet_cifar" and model.output_shape == (None, 10)

    metrics = evaluate(cfg)
    assert list(metrics["per_class_accuracy"]) == CIFAR_CLASSES
    plots = base / "plots" / "cifar10" / "resnet_cifar"
    cm = json.loads((plots / "confusion_matrix.json").read_text())
    assert cm["classes"] == CIFAR_CLASSES
    matrix = np.array(cm["matrix"])
    assert matrix.shape == (10, 10) and (matrix.sum(axis=1) == 2).all()
    assert metrics["val_accuracy"] == pytest.approx(np.trace(matrix) / 20)
    assert (plots / "confusion_matrix.png").is_file()
    vp = pd.read_csv(plots / "val_predictions.csv")
    probs = vp[[f"p_{c}" for c in CIFAR_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    from sklearn.metrics import log_loss

    assert metrics["val_log_loss"] == pytest.approx(log_loss(vp["label"], probs, labels=list(range(10))), rel=1e-9)

    record = predict(cfg)
    csv = base / "submissions" / "cifar10-resnet_cifar.csv"
    assert record["rows"] == N_TEST
    assert csv.read_text().splitlines()[0] == "id,label"
    sub = pd.read_csv(csv)
    assert sub["id"].tolist() == list(range(1, N_TEST + 1))  # 10, 11, 12 after 9
    assert sub["label"].isin(CIFAR_CLASSES).all()
    test = pd.read_csv(out / "test.csv")
    xt = np.load(out / "test.npy")
    p = model.predict(xt[test["index"].to_numpy()], verbose=0)
    expected = dict(zip(test["id"], np.asarray(CIFAR_CLASSES)[p.argmax(axis=1)]))
    assert sub.set_index("id")["label"].to_dict() == expected


def _seven_zip(folder: Path, archive: Path) -> None:
    py7zr = pytest.importorskip("py7zr")
    with py7zr.SevenZipFile(archive, "w") as z:
        z.writeall(folder, arcname=folder.name)


def test_7z_archives_are_unpacked(tmp_path: Path):
    src, truth = cifar(tmp_path / "src", n_per_class=2, n_test=4)
    raw = tmp_path / "raw" / "cifar10"
    raw.mkdir(parents=True)
    _seven_zip(src / "train", raw / "train.7z")
    _seven_zip(src / "test", raw / "test.7z")
    for f in ("trainLabels.csv", "sampleSubmission.csv"):
        (raw / f).write_text((src / f).read_text())
    out = prepare(_cfg(tmp_path, "dataset.val_fraction=0.5"))
    assert len(list((raw / "train").glob("*.png"))) == 20 and len(list((raw / "test").glob("*.png"))) == 4
    train = pd.read_csv(out / "train.csv", dtype={"id": str})
    assert dict(zip(train["id"].astype(int), train["class"])) == truth
    assert np.load(out / "test.npy").shape == (4, 32, 32, 3)


@pytest.mark.parametrize("breakage, message", [
    ("unknown_class", "unknown class name"),
    ("duplicate_id", "appears 2 times"),
    ("missing_test_image", "sampleSubmission.csv"),
    ("bad_header", "id,label"),
])
def test_bad_input_is_a_clear_error(tmp_path: Path, breakage: str, message: str):
    raw, truth = cifar(tmp_path / "raw" / "cifar10", n_per_class=2, n_test=4)
    labels = raw / "trainLabels.csv"
    if breakage == "unknown_class":
        labels.write_text(labels.read_text().replace(f"\n3,{truth[3]}\n", "\n3,kitten\n"))
    elif breakage == "duplicate_id":
        labels.write_text(labels.read_text() + f"7,{truth[7]}\n")
    elif breakage == "missing_test_image":
        (raw / "test" / "3.png").unlink()
    elif breakage == "bad_header":
        labels.write_text("image,class\n" + labels.read_text().split("\n", 1)[1])
    with pytest.raises(UserError, match=message) as e:
        prepare(_cfg(tmp_path, "dataset.val_fraction=0.5"))
    assert "\n" not in str(e.value)
    if breakage == "unknown_class":
        assert "kitten" in str(e.value)
    if breakage == "missing_test_image":
        assert "e.g. 3" in str(e.value)
