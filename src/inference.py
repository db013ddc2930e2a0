"""A trained model's probabilities, as files: the seam between training and everything after it.

    models/<dataset>/<name>/predictions/val.csv    id, label, p_<class>...   (the validation fold)
    models/<dataset>/<name>/predictions/test.csv   id, ok, p_<class>...      (every test image; ok: readable)

One column per class (for two classes p_<classes[1]> is the model's sigmoid, p_<classes[0]> its complement), the
model's own probabilities: no temperature, no clip (src/submission.py finalizes them). Beside each CSV a .json
says what made it: the MLflow run, the model file and its sha256, TTA, the classes, and the CSV's own sha256.
Train writes both at its end; evaluate and predict read them, and remake them from the model only when they are
missing or were made by another model or another train.tta. How a model predicts a split is its runner: the
Keras model on the images, or for the frozen-feature mode its head on the cached embeddings (src/features.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from . import progress
from .errors import UserError
from .files import atomic_path, file_sha256, read_json, write_json
from .paths import Layout, shown_path

SPLITS = ("val", "test")


@dataclass
class Predictions:
    frame: pd.DataFrame  # id, label (val) or ok (test), p_<class>...
    meta: dict

    def probs(self) -> np.ndarray:
        """P(class 1) for two classes (1-D), else one row of class probabilities per image."""
        p = self.frame[[f"p_{c}" for c in self.meta["classes"]]].to_numpy(dtype=np.float64)
        return p[:, 1] if p.shape[1] == 2 else p


def load_model(lay: Layout):
    if not lay.model.is_file():
        raise UserError(f"{lay.model} not found; train it first: python -m src.train dataset={lay.dataset} "
                        f"name={lay.name}")
    return load_keras(lay.model)


def load_keras(path: Path):
    """A saved .keras model, with the project's custom layers registered."""
    import keras

    from . import models, optimizer  # noqa: F401  (register the custom layers and metric the saved model refers to)

    return keras.saving.load_model(path)


def predict_proba(model, make_dataset, tta: bool, what: str = "inference", n: int | None = None) -> np.ndarray:
    """Probabilities in dataset order (1-D P(class 1) for two classes); tta also averages over horizontally
    flipped images. make_dataset(flip) gives the n images; progress is shown as `what` (src/progress.py)."""
    passes = (False, True) if tta else (False,)
    with progress.bar(what, total=n * len(passes) if n else None, unit="img") as shown:
        callbacks = [progress.predict_callback(shown)]
        outs = [np.asarray(model.predict(make_dataset(flip), verbose=0, callbacks=callbacks), dtype=np.float64)
                for flip in passes]
    p = outs[0] if len(outs) == 1 else (outs[0] + outs[1]) / 2
    return p.reshape(len(p)) if p.ndim == 2 and p.shape[1] == 1 else p


def runner(cfg: DictConfig, m, model) -> tuple[Any, Callable[[str, bool], Any]]:
    """The Keras model that predicts and inputs(split, flip), what it predicts from: a split's images ("val" or
    "test"; flip: mirrored), in manifest order, or for the frozen-feature mode its head on the split's cached
    embeddings (src/features.py; the same numbers as its model.keras gives from the images, without embedding
    them again)."""
    from . import features
    from .data import test_dataset, val_dataset

    if features.is_features(cfg):
        return features.predictor(cfg, m, model)
    bs = int(cfg.train.batch_size)

    def inputs(split: str, flip: bool):
        return val_dataset(m, max(bs, 64), flip=flip) if split == "val" else test_dataset(m, max(bs, 256), flip=flip)
    return model, inputs


def write(cfg: DictConfig, lay: Layout, m, model=None, splits: tuple[str, ...] = SPLITS) -> None:
    """Predict the given splits with the model (loaded from lay.model if not given) and write their files."""
    model = model if model is not None else load_model(lay)
    predicting, inputs = runner(cfg, m, model)
    tta = bool(cfg.train.tta)
    for split in splits:
        rows = m.val if split == "val" else m.test
        p = predict_proba(predicting, lambda flip: inputs(split, flip), tta, f"inference: {split}", len(rows))
        if split == "val":
            frame = pd.DataFrame({"id": m.val["id"], "label": m.val["label"]})
        else:
            frame = pd.DataFrame({"id": m.test["id"], "ok": m.test["ok"].astype(bool)})
        columns = np.stack([1 - p, p], axis=1) if p.ndim == 1 else p
        for i, c in enumerate(m.classes):
            frame[f"p_{c}"] = columns[:, i]
        _save(lay, split, frame, {"split": split, "tta": tta, "classes": list(m.classes), "data": m.fingerprint()})


def _save(lay: Layout, split: str, frame: pd.DataFrame, meta: dict) -> None:
    csv = lay.predictions(split)
    with atomic_path(csv, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)  # floats in full precision: they read back exactly
    run = read_json(lay.run_info) if lay.run_info.is_file() else {}
    write_json(csv.with_suffix(".json"), {**meta, "rows": len(frame), "run_id": run.get("run_id"),
                                          "model": shown_path(lay.model), "model_sha256": file_sha256(lay.model),
                                          "csv_sha256": file_sha256(csv)})


def is_current(cfg: DictConfig, lay: Layout, split: str) -> bool:
    """The split's file is whole and was made by the current model file, with the configured TTA, on the current
    prepared data (its manifests and report: a new test folder or image size makes new predictions)."""
    from . import manifests

    csv = lay.predictions(split)
    meta_file = csv.with_suffix(".json")
    if not (csv.is_file() and meta_file.is_file() and lay.model.is_file()):
        return False
    meta = read_json(meta_file)
    return (meta.get("tta") == bool(cfg.train.tta) and meta.get("model_sha256") == file_sha256(lay.model)
            and meta.get("csv_sha256") == file_sha256(csv)
            and meta.get("data") == manifests.load(lay).fingerprint())


def predictions(cfg: DictConfig, lay: Layout, split: str) -> Predictions:
    """The split's predictions from their file, remade from the model first if they are not current."""
    if not is_current(cfg, lay, split):
        from . import manifests

        print(f"inference: {lay.predictions(split)} missing, or made by another model, TTA setting or prepared data; "
              "predicting")
        write(cfg, lay, manifests.for_run(cfg, lay), splits=(split,))  # a fold's own validation images
    return read(lay.predictions(split))


def read(csv: Path) -> Predictions:
    meta = read_json(csv.with_suffix(".json"))
    frame = pd.read_csv(csv, dtype=None if meta["split"] == "test" else {"id": str})  # training ids are text
    return Predictions(frame, meta)
