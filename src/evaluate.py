"""Stage 3, evaluate: the competition's metric on exactly the probabilities a submission would hold.

    python -m src.evaluate dataset=demo

Reads the model's validation probabilities (models/<dataset>/<name>/predictions/val.csv, src/inference.py),
chooses the temperature and the clip on them (src/calibration.py), finalizes them as predict will finalize the
test images (src/submission.py), and writes metrics/<dataset>/<name>.json (val_log_loss by Kaggle's formula on the
finalized probabilities, accuracy, the temperature and clip predict will use, ...) and plots/<dataset>/<name>/:
val_predictions.csv (the finalized validation probabilities), roc.png + calibration.png (two classes) or
confusion_matrix.png + confusion_matrix.json (more), all logged to the training run in MLflow.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from . import calibration, inference, metrics, plots, submission, tracking
from .files import atomic_path, file_sha256, read_json, write_json
from .paths import Layout


def run(cfg: DictConfig) -> dict[str, Any]:
    lay = Layout(cfg)
    preds = inference.predictions(cfg, lay, "val")
    y, p = preds.frame["label"].to_numpy(), preds.probs()
    cal = calibration.fit(cfg.evaluate, y, p)
    submitted = submission.finalize(p, cal.temperature, cal.clip)  # exactly what predict does to the test images
    result = _scores(cfg, lay, y, p, submitted, cal, preds)
    _write_val_predictions(lay, preds, y, submitted)
    result.update(_plots(lay, y, submitted, preds.meta["classes"]))
    write_json(lay.metrics, result)
    print(f"evaluate: val_log_loss={result['val_log_loss']:.4f} (temperature {cal.temperature:g}, clip {cal.clip:g}) "
          f"val_accuracy={result['val_accuracy']:.4f} on {len(y)} validation images -> {lay.metrics}")
    numbers = {f"eval.{k}": float(v) for k, v in result.items()  # "eval.": apart from train's per-epoch val_* metrics
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracking.attach(cfg, preds.meta.get("run_id"), metrics=numbers, files={
        "evaluation": [lay.metrics], "plots": sorted(f for f in lay.plots.glob("*") if f.suffix in (".png", ".json", ".csv"))})
    return result


def settings(cfg: DictConfig) -> str:
    """The settings that decide the submitted probabilities, as one string (recorded with the metrics)."""
    ev = cfg.evaluate
    clip = ev.clip if ev.clip == "auto" else float(ev.clip)
    temperature = ev.temperature if ev.temperature == "auto" else float(ev.temperature)
    return f"clip={clip} temperature={temperature} tta={bool(cfg.train.tta)}"


def is_current(cfg: DictConfig) -> bool:
    """metrics/<dataset>/<name>.json was computed from the current validation predictions with these settings."""
    lay = Layout(cfg)
    if not (lay.metrics.is_file() and inference.is_current(cfg, lay, "val")):
        return False
    done = read_json(lay.metrics)
    return (done.get("settings") == settings(cfg)
            and done.get("val_predictions_sha256") == file_sha256(lay.predictions("val")))


def _scores(cfg: DictConfig, lay: Layout, y: np.ndarray, p: np.ndarray, submitted: np.ndarray,
            cal: calibration.Calibration, preds: inference.Predictions) -> dict[str, Any]:
    calibrated = submission.apply_temperature(p, cal.temperature)
    return {
        "val_log_loss": metrics.kaggle_log_loss(y, submitted),
        "val_log_loss_unclipped": metrics.kaggle_log_loss(y, calibrated),
        "val_log_loss_model": metrics.kaggle_log_loss(y, p),  # the model's own probabilities: no temperature, no clip
        "val_accuracy": metrics.accuracy(y, submitted),
        **cal.as_dict(),
        "settings": settings(cfg),
        "tta": bool(preds.meta["tta"]),
        "n_val": int(len(y)),
        "metric": str(cfg.dataset.metric),
        "run_id": preds.meta.get("run_id"),
        "model_sha256": preds.meta["model_sha256"],  # which model file these numbers (and the clip) belong to
        "val_predictions_sha256": file_sha256(lay.predictions("val")),
    }


def _write_val_predictions(lay: Layout, preds: inference.Predictions, y: np.ndarray, submitted: np.ndarray) -> None:
    """Every validation image: id, label, then probability (two classes) or predicted + p_<class> (more)."""
    cols: dict[str, Any] = {"id": preds.frame["id"], "label": y}
    if submitted.ndim == 1:
        cols["probability"] = submitted
    else:
        cols["predicted"] = metrics.predicted_labels(submitted)
        cols.update({f"p_{c}": submitted[:, i] for i, c in enumerate(preds.meta["classes"])})
    with atomic_path(lay.val_predictions, suffix=".csv") as tmp:
        pd.DataFrame(cols).to_csv(tmp, index=False)


def _plots(lay: Layout, y: np.ndarray, p: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """ROC and calibration curves (two classes) or the confusion matrix (more); the figures they add."""
    if p.ndim == 1:
        auc = metrics.roc_auc(y, p)
        if auc is not None:
            plots.roc(y, p, auc, classes[1], lay.plot("roc.png"))
        plots.calibration(y, p, classes[1], lay.plot("calibration.png"))
        return {"val_roc_auc": auc} if auc is not None else {}
    per_class, cm = metrics.per_class_accuracy(y, p, classes)
    write_json(lay.plot("confusion_matrix.json"), {"classes": classes, "matrix": cm.tolist(),
                                                  "per_class_accuracy": per_class})
    plots.confusion_matrix(cm, classes, lay.plot("confusion_matrix.png"))
    return {"per_class_accuracy": per_class}


if __name__ == "__main__":
    from .cli import main

    main("evaluate")
