"""Stage 4, predict: the test images -> submissions/<dataset>-<name>.csv in the competition's exact format.

    python -m src.predict dataset=demo

Reads the model's test probabilities (models/<dataset>/<name>/predictions/test.csv, src/inference.py: every test
image streamed from its memory-mapped array, bounded memory for CIFAR-10's 300,000), finalizes them with the
temperature and clip evaluate chose (metrics/<dataset>/<name>.json) and the class prior for unreadable images
(src/submission.py), maps each prediction to its id explicitly, and checks the CSV against the sample submission
before writing it (atomically). submissions/<dataset>-<name>.json records the run and model behind it; the CSV
is attached to the training run in MLflow.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from omegaconf import DictConfig

from . import inference, manifests, oof, submission, tracking
from .files import file_sha256, read_json, write_json
from .paths import Layout, shown_path


def run(cfg: DictConfig) -> dict[str, Any]:
    lay = Layout(cfg)
    preds = oof.test_predictions(cfg)  # the fold models' average for a cross-validated member
    scores = read_json(lay.metrics)  # evaluate's: the temperature and clip chosen on validation
    m = manifests.load(lay)
    labels, classes = m.labels(), list(m.classes)
    unreadable = ~preds.frame["ok"].to_numpy(dtype=bool)
    p = submission.finalize(preds.probs(), float(scores["temperature"]), float(scores["clip"]),
                            submission.class_prior(labels, len(classes)), unreadable)
    if unreadable.any():
        print(f"predict: {int(unreadable.sum())} unreadable test image(s) predicted with the class prior "
              f"(see {lay.report})")
    kind = str(cfg.dataset.submission)
    df = submission.build(preds.frame["id"].to_numpy(), p, classes, kind)
    submission.validate(df, kind, classes, clip=float(scores["clip"]) if kind == "probability" else None,
                        sample=lay.sample_submission)
    submission.write(df, lay.submission)
    record = _record(cfg, lay, preds, scores, len(df))
    print(f"predict: {len(df)} rows -> {lay.submission} (checked against "
          f"{lay.sample_submission.name if lay.sample_submission.is_file() else 'no sample submission'})")
    tracking.attach(cfg, record["run_id"], files={"submission": [lay.submission]},
                    tags={"submission.csv": str(lay.submission), "submission.rows": str(len(df)),
                          "submission.sha256": record["sha256"]})
    return record


def _record(cfg: DictConfig, lay: Layout, preds: inference.Predictions, scores: dict, rows: int) -> dict[str, Any]:
    """submissions/<dataset>-<name>.json: which run, model and settings made the CSV."""
    record = {"csv": str(lay.submission), "dataset": lay.dataset, "name": lay.name, "run_id": scores.get("run_id"),
              "tracking_uri": tracking.tracking_uri(cfg) if tracking.enabled(cfg) else None,
              "sha256": file_sha256(lay.submission), "model": preds.meta.get("model"),
              "model_sha256": preds.meta.get("model_sha256"), "folds": lay.folds,
              "fold_runs": preds.meta.get("fold_runs"), "clip": float(scores["clip"]),
              "temperature": float(scores["temperature"]), "rows": rows, "tta": bool(preds.meta["tta"]),
              "val_log_loss": scores.get("val_log_loss"), "val_accuracy": scores.get("val_accuracy"),
              "predictions": shown_path(lay.oof_test if lay.folds else lay.predictions("test")),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(lay.submission_record, record)
    return record


def is_current(cfg: DictConfig) -> bool:  # the last stage: always run when asked for
    return False


if __name__ == "__main__":
    from .cli import main

    main("predict")
