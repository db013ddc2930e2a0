"""Stage 4, predict: test images -> submissions/<dataset>-<name>.csv in the competition's exact format.

    python -m src.predict dataset=demo

Test images stream from the memory-mapped array in batches (bounded memory for CIFAR-10's 300,000).
Probabilities get the temperature and the clip evaluate chose (metrics/<dataset>/<name>.json), each prediction
is mapped to its id explicitly, rows are in numeric id order, and the CSV is checked against the
sample submission before it is written (atomically). The CSV is attached to the training run in MLflow,
and submissions/<dataset>-<name>.json records which run and model produced it.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
from omegaconf import DictConfig

from . import submission, tracking
from .common import Layout, file_sha256, project_path, read_json, write_json


def predict(cfg: DictConfig) -> dict[str, Any]:
    from .data import load_manifests, test_dataset
    from .evaluate import evaluate, is_evaluated, load_trained, predict_proba
    from .prepare import ensure_prepared

    lay = Layout(cfg)
    m = load_manifests(ensure_prepared(cfg))
    model, info = load_trained(cfg)
    if not is_evaluated(lay, info, cfg):  # none yet, or for another model or other clip/temperature/TTA settings
        print("predict: no evaluation for this model and these settings yet; running evaluate first "
              "(it chooses the temperature and the clip)")
        evaluate(cfg)
    metrics = read_json(lay.metrics)
    clip = float(metrics["clip"])
    temperature = float(metrics.get("temperature", 1.0))
    bs = max(int(cfg.train.batch_size), 256)
    t0 = time.perf_counter()
    p = predict_proba(model, lambda flip: test_dataset(m, bs, flip=flip), bool(cfg.train.tta))
    seconds = time.perf_counter() - t0
    p = submission.apply_temperature(p, temperature)
    ok = m.test["ok"].to_numpy(dtype=bool)
    if (~ok).any():  # unreadable test images keep their row, predicted with the training prior
        labels = np.concatenate([m.train["label"].to_numpy(), m.val["label"].to_numpy()])
        prior = np.bincount(labels, minlength=m.num_classes) / len(labels)
        p[~ok] = prior[1] if p.ndim == 1 else prior
        print(f"predict: {int((~ok).sum())} unreadable test image(s) predicted with the class prior (see report.json)")
    p = submission.clip_probabilities(p, clip)
    kind = str(cfg.dataset.submission)
    df = submission.build(m.test["id"].to_numpy(), p, m.classes, kind)
    sample = project_path(cfg.dataset.raw_dir) / str(cfg.dataset.sample_submission)
    submission.validate(df, kind, m.classes, clip=clip if kind == "probability" else None, sample=sample)
    submission.write(df, lay.submission)
    record = {"csv": str(lay.submission), "dataset": cfg.dataset.name, "name": lay.name, "run_id": info.get("run_id"),
              "tracking_uri": info.get("tracking_uri"), "sha256": file_sha256(lay.submission),
              "model": str(lay.model), "clip": clip, "temperature": temperature, "rows": int(len(df)), "tta": bool(cfg.train.tta),
              "val_log_loss": metrics.get("val_log_loss"), "val_accuracy": metrics.get("val_accuracy"),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "images_per_second": round(len(df) * (2 if cfg.train.tta else 1) / seconds, 1)}
    write_json(lay.submission.with_suffix(".json"), record)
    print(f"predict: {len(df)} rows -> {lay.submission} ({record['images_per_second']:.0f} img/s; "
          f"checked against {sample.name if sample.is_file() else 'no sample submission'})")
    if info.get("run_id") and tracking.enabled(cfg):
        with tracking.run(cfg, lay.name, run_id=info["run_id"]) as mlflow:
            mlflow.log_artifact(str(lay.submission), "submission")
            mlflow.set_tags({"submission.csv": str(lay.submission), "submission.rows": str(len(df)),
                             "submission.sha256": record["sha256"]})
            mlflow.log_metric("predict_images_per_second", record["images_per_second"])
    return record


def main() -> None:
    import hydra

    from .common import cli, precheck_overrides

    precheck_overrides()

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    @cli
    def _run(cfg: DictConfig) -> None:
        predict(cfg)

    _run()


if __name__ == "__main__":
    main()
