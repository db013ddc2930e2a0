"""Stage 3, evaluate: validation metrics on exactly the probabilities a submission would hold.

    python -m src.evaluate dataset=demo

Calibrates on validation (evaluate.temperature=auto: the logits' temperature that minimises log loss; 1 = off),
chooses the submission clip on validation (evaluate.clip=auto) or uses the configured ones, then writes
metrics/<dataset>/<name>.json (val_log_loss by Kaggle's formula on the clipped probabilities, accuracy, ...),
and plots/<dataset>/<name>/: val_predictions.csv, roc.png + calibration.png (two classes) or
confusion_matrix.png + confusion_matrix.json (more), all logged to the training run in MLflow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from . import tracking
from .common import Layout, UserError, atomic_path, file_sha256, read_json, write_json
from .submission import apply_temperature, choose_clip, choose_temperature, clip_probabilities, kaggle_log_loss


def load_trained(cfg: DictConfig):
    """The trained model and its run summary (models/<dataset>/<name>/)."""
    import keras

    from .models import CUSTOM_OBJECTS

    lay = Layout(cfg)
    if not lay.model.is_file():
        raise UserError(f"{lay.model} not found; train it first: python -m src.train dataset={cfg.dataset.name} "
                        f"name={lay.name}")
    info = read_json(lay.run_info) if lay.run_info.is_file() else {}
    return keras.saving.load_model(lay.model, custom_objects=CUSTOM_OBJECTS), info


def evaluate_settings(cfg: DictConfig) -> str:
    """The settings that decide the submitted probabilities, as one string (recorded with the metrics, compared
    by predict)."""
    clip, temperature = cfg.evaluate.clip, cfg.evaluate.get("temperature", 1.0)
    clip = clip if clip == "auto" else float(clip)
    temperature = temperature if temperature == "auto" else float(temperature)
    return f"clip={clip} temperature={temperature} tta={bool(cfg.train.tta)}"


def is_evaluated(lay: Layout, info: dict[str, Any], cfg: DictConfig | None = None) -> bool:
    """True when metrics/<dataset>/<name>.json was computed for this very model (same run id and model file)
    and, given cfg, with the same clip/temperature/TTA settings."""
    if not lay.metrics.is_file():
        return False
    done = read_json(lay.metrics)
    same_settings = cfg is None or done.get("settings") == evaluate_settings(cfg)
    return (done.get("run_id") == info.get("run_id") and done.get("model_sha256") == file_sha256(lay.model)
            and same_settings)


def predict_proba(model, make_ds, tta: bool) -> np.ndarray:
    """Probabilities in dataset order; tta averages with horizontally flipped images."""
    p = np.asarray(model.predict(make_ds(False), verbose=0), dtype=np.float64)
    if tta:
        p = (p + np.asarray(model.predict(make_ds(True), verbose=0), dtype=np.float64)) / 2
    return p.reshape(len(p)) if p.ndim == 2 and p.shape[1] == 1 else p


def submission_temperature(cfg: DictConfig, y: np.ndarray, p: np.ndarray) -> float:
    t = cfg.evaluate.get("temperature", 1.0)
    if t == "auto":
        return choose_temperature(y, p)
    return float(t)


def submission_clip(cfg: DictConfig, y: np.ndarray, p: np.ndarray) -> float:
    if cfg.evaluate.clip == "auto":
        return choose_clip(y, p, list(cfg.evaluate.clip_candidates))
    return float(cfg.evaluate.clip)


def _plots(y: np.ndarray, p: np.ndarray, classes: list[str], out: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

    extra: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)

    def save(fig, name):
        with atomic_path(out / name, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)

    if p.ndim == 1:
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, p)
            extra["val_roc_auc"] = float(roc_auc_score(y, p))
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.plot(fpr, tpr, label=f"AUC {extra['val_roc_auc']:.3f}")
            ax.plot([0, 1], [0, 1], "k:")
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (P({classes[1]}))")
            ax.legend()
            save(fig, "roc.png")
        bins = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(p, bins) - 1, 0, 9)
        mean_p = [float(p[which == b].mean()) for b in range(10) if (which == b).any()]
        frac = [float(y[which == b].mean()) for b in range(10) if (which == b).any()]
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "k:")
        ax.plot(mean_p, frac, marker="o")
        ax.set(xlabel="mean predicted probability", ylabel=f"fraction {classes[1]}", title="calibration (validation)")
        save(fig, "calibration.png")
    else:
        pred = p.argmax(axis=1)
        cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
        per_class = {c: float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None for i, c in enumerate(classes)}
        extra["per_class_accuracy"] = per_class
        write_json(out / "confusion_matrix.json", {"classes": classes, "matrix": cm.tolist(),
                                                   "per_class_accuracy": per_class})
        fig, ax = plt.subplots(figsize=(7, 6))
        im = ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (validation)")
        fig.colorbar(im)
        fig.tight_layout()
        save(fig, "confusion_matrix.png")
    return extra


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from .data import load_manifests, val_dataset
    from .prepare import ensure_prepared

    lay = Layout(cfg)
    m = load_manifests(ensure_prepared(cfg))
    model, info = load_trained(cfg)
    bs = max(int(cfg.train.batch_size), 64)
    tta = bool(cfg.train.tta)
    p = predict_proba(model, lambda flip: val_dataset(m, bs, flip=flip), tta)
    y = m.val["label"].to_numpy()
    temperature = submission_temperature(cfg, y, p)
    calibrated = apply_temperature(p, temperature)
    clip = submission_clip(cfg, y, calibrated)
    submitted = clip_probabilities(calibrated, clip)  # exactly what predict writes for these images
    pred = submitted.argmax(axis=1) if submitted.ndim == 2 else (submitted >= 0.5).astype(int)
    metrics: dict[str, Any] = {
        "val_log_loss": kaggle_log_loss(y, submitted),
        "val_log_loss_unclipped": kaggle_log_loss(y, calibrated),
        "val_log_loss_model": kaggle_log_loss(y, p),  # the model's own probabilities: no temperature, no clip
        "val_accuracy": float((pred == y).mean()),
        "clip": clip,
        "temperature": temperature,
        "settings": evaluate_settings(cfg),
        "tta": tta,
        "n_val": int(len(y)),
        "metric": str(cfg.dataset.metric),
        "run_id": info.get("run_id"),
        "model_sha256": file_sha256(lay.model),  # which model file these numbers (and the clip) belong to
    }
    cols = {"id": m.val["id"], "label": y}
    if submitted.ndim == 1:
        cols["probability"] = submitted
    else:
        cols["predicted"] = pred
        cols.update({f"p_{c}": submitted[:, i] for i, c in enumerate(m.classes)})
    with atomic_path(lay.plots / "val_predictions.csv", suffix=".csv") as tmp:
        pd.DataFrame(cols).to_csv(tmp, index=False)
    metrics.update(_plots(y, submitted, m.classes, lay.plots))
    write_json(lay.metrics, metrics)
    print(f"evaluate: val_log_loss={metrics['val_log_loss']:.4f} (temperature {temperature:g}, clip {clip:g}) val_accuracy={metrics['val_accuracy']:.4f} "
          f"on {len(y)} validation images -> {lay.metrics}")
    if info.get("run_id") and tracking.enabled(cfg):
        with tracking.run(cfg, lay.name, run_id=info["run_id"]) as mlflow:
            # "eval." keeps these apart from train's per-epoch val_log_loss/val_accuracy histories
            mlflow.log_metrics({f"eval.{k}": float(v) for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
            mlflow.log_artifact(str(lay.metrics), "evaluation")
            for f in sorted(lay.plots.glob("*")):
                if f.suffix in (".png", ".json", ".csv"):
                    mlflow.log_artifact(str(f), "plots")
    return metrics


def main() -> None:
    import hydra

    from .common import cli, precheck_overrides

    precheck_overrides()

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    @cli
    def _run(cfg: DictConfig) -> None:
        evaluate(cfg)

    _run()


if __name__ == "__main__":
    main()
