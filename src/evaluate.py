"""Stage 3, evaluate: the competition's metric on exactly the probabilities a submission would hold.

    python -m src.evaluate dataset=demo

Reads the model's validation probabilities (models/<dataset>/<name>/predictions/val.csv, src/inference.py) or,
for a cross-validated member (cv.folds=k), its k folds' joined into out-of-fold predictions over every training
image (src/oof.py), chooses the temperature and the clip on them (src/calibration.py), finalizes them as predict
will finalize the test images (src/submission.py), and writes metrics/<dataset>/<name>.json (val_log_loss by Kaggle's formula on the
finalized probabilities, accuracy, the temperature and clip predict will use, ...) and plots/<dataset>/<name>/:
val_predictions.csv (the finalized validation probabilities), roc.png + calibration.png (two classes) or
confusion_matrix.png + confusion_matrix.json (more), most_wrong.png + confused_pairs.png (the images it gets
wrong, src/error_analysis.py), all logged to the training run in MLflow.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from . import calibration, error_analysis, inference, manifests, metrics, oof, plots, submission, tracking
from .files import atomic_path, file_sha256, read_json, write_json
from .paths import Layout


def run(cfg: DictConfig) -> dict[str, Any]:
    lay = Layout(cfg)
    member = oof.assemble(cfg) if lay.folds else _holdout(cfg, lay)
    y, p = member.labels, member.oof.probs()
    cal = calibration.fit(cfg.evaluate, y, p)
    submitted = submission.finalize(p, cal.temperature, cal.clip)  # exactly what predict does to the test images
    result = _scores(cfg, lay, member, y, p, submitted, cal)
    _write_val_predictions(lay, member.oof, y, submitted)
    result.update(_plots(cfg, lay, member, y, submitted))
    write_json(lay.metrics, result)
    what = f"OOF over {len(y)} training images ({lay.folds} folds)" if lay.folds else f"{len(y)} validation images"
    print(f"evaluate: val_log_loss={result['val_log_loss']:.4f} (temperature {cal.temperature:g}, clip {cal.clip:g}) "
          f"val_accuracy={result['val_accuracy']:.4f} on {what} -> {lay.metrics}")
    numbers = {f"eval.{k}": float(v) for k, v in result.items()  # "eval.": apart from train's per-epoch val_* metrics
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracking.attach(cfg, result["run_id"], metrics=numbers, files={
        "evaluation": [lay.metrics], "plots": sorted(f for f in lay.plots.glob("*") if f.suffix in (".png", ".json", ".csv"))})
    _log_model(cfg, lay, member, cal, result)
    return result


def _log_model(cfg: DictConfig, lay: Layout, member: oof.Member, cal: calibration.Calibration,
               result: dict[str, Any]) -> None:
    """The member as one MLflow Model on its run: its model file(s) with the settings that make its submission
    (fold average, TTA, this temperature and clip), so the model predicts what the CSV holds."""
    files = [Layout(oof.fold_config(cfg, i)).model for i in range(int(lay.folds))] if lay.folds else [lay.model]
    settings = {"classes": list(member.oof.meta["classes"]), "tta": bool(member.oof.meta["tta"]),
                "average": str(cfg.cv.average), "temperature": cal.temperature, "clip": cal.clip}
    example = np.array(np.load(manifests.load(lay).test_images, mmap_mode="r")[:2])  # two test images
    uri = tracking.log_model(cfg, result["run_id"], lay.name, files, settings, example,
                             {k: float(result[k]) for k in ("val_log_loss", "val_accuracy")})
    if uri:
        print(f"evaluate: MLflow Model {uri} (mlflow.pyfunc.load_model; predicts the submitted probabilities)")


def _holdout(cfg: DictConfig, lay: Layout) -> oof.Member:
    """One model on prepare's split: its validation fold is its OOF."""
    val = inference.predictions(cfg, lay, "val")
    val.frame.insert(1, "fold", "val")
    return oof.Member(lay.name, val, None)


def settings(cfg: DictConfig) -> str:
    """The settings that decide the submitted probabilities, as one string (recorded with the metrics)."""
    ev = cfg.evaluate
    # clip=auto chooses among the candidates: another list may choose another clip
    clip = f"auto{[float(c) for c in ev.clip_candidates]}" if ev.clip == "auto" else float(ev.clip)
    temperature = ev.temperature if ev.temperature == "auto" else float(ev.temperature)
    cv = f" cv.folds={cfg.cv.folds} cv.average={cfg.cv.average}" if cfg.cv.folds else ""
    return f"clip={clip} temperature={temperature} tta={bool(cfg.train.tta)}{cv}"


def is_current(cfg: DictConfig) -> bool:
    """metrics/<dataset>/<name>.json was computed from the current (out-of-fold) validation predictions with these
    settings."""
    lay = Layout(cfg)
    source = lay.oof if lay.folds else lay.predictions("val")
    fresh = oof.is_current(cfg) if lay.folds else inference.is_current(cfg, lay, "val")
    if not (lay.metrics.is_file() and fresh):
        return False
    done = read_json(lay.metrics)
    return done.get("settings") == settings(cfg) and done.get("val_predictions_sha256") == file_sha256(source)


def _scores(cfg: DictConfig, lay: Layout, member: oof.Member, y: np.ndarray, p: np.ndarray, submitted: np.ndarray,
            cal: calibration.Calibration) -> dict[str, Any]:
    meta = member.oof.meta
    calibrated = submission.apply_temperature(p, cal.temperature)
    scores = {
        "val_log_loss": metrics.kaggle_log_loss(y, submitted),  # OOF over every training image with cv.folds
        "val_log_loss_unclipped": metrics.kaggle_log_loss(y, calibrated),
        "val_log_loss_model": metrics.kaggle_log_loss(y, p),  # the models' own probabilities: no temperature, no clip
        "val_accuracy": metrics.accuracy(y, submitted),
        **cal.as_dict(),
        "settings": settings(cfg),
        "tta": bool(meta["tta"]),
        "n_val": int(len(y)),
        "metric": str(cfg.dataset.metric),
        "run_id": _member_run(cfg, lay, member) if lay.folds else meta.get("run_id"),
        "val_predictions_sha256": file_sha256(lay.oof if lay.folds else lay.predictions("val")),
    }
    if lay.folds:
        scores.update(_per_fold(member, y, submitted), folds=int(lay.folds), fold_runs=meta["fold_runs"],
                      fold_average=meta["average"])
    else:
        scores["model_sha256"] = meta["model_sha256"]  # which model file these numbers (and the clip) belong to
    return scores


def _per_fold(member: oof.Member, y: np.ndarray, submitted: np.ndarray) -> dict[str, Any]:
    """Each fold's scores on its own held-out images (finalized like the rest), and their mean and spread."""
    fold = member.oof.frame["fold"].to_numpy()
    losses = [metrics.kaggle_log_loss(y[fold == f], submitted[fold == f]) for f in np.unique(fold)]
    accs = [metrics.accuracy(y[fold == f], submitted[fold == f]) for f in np.unique(fold)]
    return {"fold_val_log_loss": losses, "fold_val_log_loss_mean": float(np.mean(losses)),
            "fold_val_log_loss_std": float(np.std(losses)), "fold_val_accuracy": accs,
            "fold_val_accuracy_mean": float(np.mean(accs)), "fold_val_accuracy_std": float(np.std(accs))}


def _member_run(cfg: DictConfig, lay: Layout, member: oof.Member) -> str | None:
    """The cross-validated member's parent run; folds trained apart (one command each) get one made for them."""
    if member.run_id:
        return member.run_id
    run_id = tracking.adopt(cfg, f"cv-{lay.name}", member.oof.meta["fold_runs"],
                            tags={"dataset": lay.dataset, "member": lay.name, "cv.folds": str(lay.folds)})
    if run_id:
        oof.record_member(lay, run_id=run_id)
    return run_id


def _write_val_predictions(lay: Layout, preds: inference.Predictions, y: np.ndarray, submitted: np.ndarray) -> None:
    """Every validation (OOF) image: id, [fold,] label, then probability (two classes) or predicted + p_<class>."""
    cols: dict[str, Any] = {"id": preds.frame["id"], **({"fold": preds.frame["fold"]} if lay.folds else {}),
                            "label": y}
    if submitted.ndim == 1:
        cols["probability"] = submitted
    else:
        cols["predicted"] = metrics.predicted_labels(submitted)
        cols.update({f"p_{c}": submitted[:, i] for i, c in enumerate(preds.meta["classes"])})
    with atomic_path(lay.val_predictions, suffix=".csv") as tmp:
        pd.DataFrame(cols).to_csv(tmp, index=False)


def _plots(cfg: DictConfig, lay: Layout, member: oof.Member, y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """The images it gets wrong; ROC and calibration curves (two classes) or the confusion matrix (more); the
    figures they add."""
    classes = member.oof.meta["classes"]
    error_analysis.draw(lay, manifests.load(lay), member.oof.frame, y, p, classes, int(cfg.evaluate.error_grid),
                        int(cfg.evaluate.confused_pairs))
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
