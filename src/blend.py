"""Blend: several members' out-of-fold and test predictions combined into one submission.

    python -m src.blend dataset=dogs_vs_cats 'blend.members=[xception_mini_cv,resnet_small_cv]'
    python -m src.blend +blend=dogs_vs_cats            # members named in conf/blend/dogs_vs_cats.yaml

A member is a name its folds were trained under (all of them; src/oof.py), or an MLflow run id of one of its
runs. blend.weights=fit: non-negative weights summing to 1 that minimise the competition metric on the OOF
predictions (log loss: a weighted mean of the logits; accuracy: of the probabilities, searched on a simplex
grid); mean: equal weights. The temperature and clip are then chosen on the blended OOF (evaluate.*), exactly as
for one model, and the same finalize step makes the submitted test probabilities. Writes
submissions/<dataset>-<blend.name>.csv (+ .json: members, weights, runs), metrics/<dataset>/<blend.name>.json and
plots/<dataset>/<blend.name>/val_predictions.csv; the blend is its own MLflow run, tagged with its members' runs.
"""
from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from . import calibration, metrics, oof, progress, submission, tracking
from .errors import UserError
from .files import file_sha256, write_json
from .oof import Member
from .paths import Layout


def run(cfg: DictConfig) -> dict[str, Any]:
    members = [oof.load(cfg, name) for name in member_names(cfg)]
    check_compatible(members)
    y, space = members[0].labels, combination_space(cfg)
    weights = fit_weights(y, [m.oof.probs() for m in members], space, str(cfg.dataset.metric)) \
        if cfg.blend.weights == "fit" else np.full(len(members), 1 / len(members))
    blended = combine([m.oof.probs() for m in members], weights, space)
    cal = calibration.fit(cfg.evaluate, y, blended)
    result = _scores(cfg, members, weights, y, blended, cal, space)
    lay = Layout(OmegaConf.merge(cfg, {"name": cfg.blend.name, "cv": {"fold": None}}))
    test = combine([m.test.probs() for m in members], weights, space)
    record = _submit(cfg, lay, members, test, cal, result)
    _write_val_predictions(lay, members[0], submission.finalize(blended, cal.temperature, cal.clip))
    write_json(lay.metrics, result)
    _track(cfg, lay, members, result, record)
    shown = ", ".join(f"{m.name} {w:.3f}" for m, w in zip(members, weights))
    print(f"blend: OOF {_metric_name(cfg)}={result[_metric_key(cfg)]:.4f} (members: "
          + ", ".join(f"{k} {v[_metric_key(cfg)]:.4f}" for k, v in result["members"].items())
          + f"); weights {shown} -> {lay.submission}")
    return result


def member_names(cfg: DictConfig) -> list[str]:
    """blend.members, with MLflow run ids resolved to the member names they belong to."""
    names = [str(n) for n in cfg.blend.members]
    if len(names) < 2:
        raise UserError("blend.members names fewer than two members; give two or more, e.g. "
                        "'blend.members=[xception_mini_cv,resnet_small_cv]'")
    names = [tracking.member_of_run(cfg, n) if _looks_like_run_id(n) else n for n in names]
    if len(set(names)) != len(names) or str(cfg.blend.name) in names:
        raise UserError(f"blend.members={names} names a member twice, or the blend itself (blend.name="
                        f"{cfg.blend.name}); name each member once and give the blend another name")
    return names


def _looks_like_run_id(s: str) -> bool:
    return len(s) == 32 and all(c in "0123456789abcdef" for c in s)


def check_compatible(members: list[Member]) -> None:
    """Every member must have predicted the same images under the same split: one line naming the one that did
    not."""
    first = members[0]
    for m in members[1:]:
        for what, a, b in (("dataset", first.oof.meta.get("dataset"), m.oof.meta.get("dataset")),
                           ("classes", first.oof.meta["classes"], m.oof.meta["classes"]),
                           ("split (folds and split seed)", first.oof.meta.get("scheme"), m.oof.meta.get("scheme"))):
            if a != b:
                raise UserError(f"blend: member {m.name!r} differs from {first.name!r} in its {what} ({b} vs {a}); "
                                "blend members trained on the same data, split and classes")
        if not first.oof.frame[["id", "fold"]].astype(str).equals(m.oof.frame[["id", "fold"]].astype(str)):
            raise UserError(f"blend: member {m.name!r} has other OOF images or folds than {first.name!r}; "
                            "blend members trained with the same cv.folds and dataset.split_seed")
        if not first.test.frame["id"].equals(m.test.frame["id"]):
            raise UserError(f"blend: member {m.name!r} predicted other test images than {first.name!r}; "
                            "prepare the dataset once and train every member on it")


def combination_space(cfg: DictConfig) -> str:
    """log loss: members are combined as logits (a weighted geometric mean); accuracy: as probabilities."""
    return "logit" if str(cfg.dataset.metric) == "log_loss" else "probability"


def combine(probs: list[np.ndarray], weights: np.ndarray, space: str) -> np.ndarray:
    p = np.stack([np.asarray(q, dtype=np.float64) for q in probs])
    w = np.asarray(weights, dtype=np.float64).reshape(-1, *([1] * (p.ndim - 1)))
    if space == "probability":
        return (w * p).sum(axis=0)
    q = np.clip(p, oof.EPS, 1 - oof.EPS)
    if q.ndim == 2:
        return 1.0 / (1.0 + np.exp(-(w * (np.log(q) - np.log1p(-q))).sum(axis=0)))
    z = (w * np.log(q)).sum(axis=0)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def fit_weights(y: np.ndarray, probs: list[np.ndarray], space: str, metric: str) -> np.ndarray:
    """Non-negative weights summing to 1 that minimise the metric on OOF: log loss by SLSQP (smooth), accuracy
    by the best point of a simplex grid (step 1/20; ties to the lower log loss)."""
    k = len(probs)
    if metric == "accuracy":
        grid = [np.array(c) / 20 for c in itertools.product(range(21), repeat=k) if sum(c) == 20]
        return max(progress.track(grid, "blend: weight grid", total=len(grid), unit="point"),
                   key=lambda w: (metrics.accuracy(y, combine(probs, w, space)),
                                  -metrics.kaggle_log_loss(y, combine(probs, w, space))))
    from scipy.optimize import minimize

    res = minimize(lambda w: metrics.kaggle_log_loss(y, combine(probs, w, space)), np.full(k, 1 / k),
                   method="SLSQP", bounds=[(0.0, 1.0)] * k, constraints=({"type": "eq", "fun": lambda w: w.sum() - 1},),
                   options={"ftol": 1e-10, "maxiter": 200})
    w = np.clip(res.x, 0, None)
    return w / w.sum()


def _metric_key(cfg: DictConfig) -> str:
    return "val_log_loss" if str(cfg.dataset.metric) == "log_loss" else "val_accuracy"


def _metric_name(cfg: DictConfig) -> str:
    return str(cfg.dataset.metric)


def _scores(cfg, members, weights, y, blended, cal, space) -> dict[str, Any]:
    """The blend's OOF scores next to each member's (each finalized the same way: its own calibration on OOF)."""
    def scored(p: np.ndarray, c: calibration.Calibration) -> dict[str, float]:
        q = submission.finalize(p, c.temperature, c.clip)
        return {"val_log_loss": metrics.kaggle_log_loss(y, q), "val_accuracy": metrics.accuracy(y, q)}

    per_member = {m.name: scored(m.oof.probs(), calibration.fit(cfg.evaluate, y, m.oof.probs())) for m in members}
    # both combination rules measured on OOF (each image has one unbiased prediction per member), same weights
    rules = {rule: scored(q, calibration.fit(cfg.evaluate, y, q))["val_log_loss"] for rule in ("logit", "probability")
             for q in [combine([m.oof.probs() for m in members], weights, rule)]}
    return {**scored(blended, cal), "val_log_loss_unclipped": metrics.kaggle_log_loss(y, blended), **cal.as_dict(),
            "val_log_loss_by_rule": rules,
            "members": per_member, "weights": {m.name: float(w) for m, w in zip(members, weights)},
            "weighting": str(cfg.blend.weights), "space": space, "n_val": int(len(y)), "metric": str(cfg.dataset.metric)}


def _submit(cfg, lay: Layout, members: list[Member], test: np.ndarray, cal, result: dict) -> dict[str, Any]:
    from . import manifests

    m = manifests.load(lay)
    classes = members[0].test.meta["classes"]
    unreadable = ~members[0].test.frame["ok"].to_numpy(dtype=bool)
    p = submission.finalize(test, cal.temperature, cal.clip, submission.class_prior(m.labels(), len(classes)), unreadable)
    kind = str(cfg.dataset.submission)
    df = submission.build(members[0].test.frame["id"].to_numpy(), p, classes, kind)
    submission.validate(df, kind, classes, clip=cal.clip if kind == "probability" else None, sample=lay.sample_submission)
    submission.write(df, lay.submission)
    record = {"csv": str(lay.submission), "dataset": lay.dataset, "name": lay.name, "blend": True,
              "members": {mm.name: {"weight": result["weights"][mm.name], "run_id": mm.run_id,
                                    "fold_runs": mm.oof.meta.get("fold_runs", [])} for mm in members},
              "sha256": file_sha256(lay.submission), "rows": int(len(df)), **cal.as_dict(),
              "val_log_loss": result["val_log_loss"], "val_accuracy": result["val_accuracy"],
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json(lay.submission_record, record)
    return record


def _write_val_predictions(lay: Layout, first: Member, finalized: np.ndarray) -> None:
    import pandas as pd

    from .files import atomic_path

    cols: dict[str, Any] = {"id": first.oof.frame["id"], "fold": first.oof.frame["fold"], "label": first.labels}
    if finalized.ndim == 1:
        cols["probability"] = finalized
    else:
        cols["predicted"] = metrics.predicted_labels(finalized)
        cols.update({f"p_{c}": finalized[:, i] for i, c in enumerate(first.oof.meta["classes"])})
    with atomic_path(lay.val_predictions, suffix=".csv") as tmp:
        pd.DataFrame(cols).to_csv(tmp, index=False)


def _track(cfg: DictConfig, lay: Layout, members: list[Member], result: dict, record: dict) -> None:
    """The blend's own MLflow run: its metrics, members and weights, the CSV; tagged with every member's runs."""
    tags = {"blend": "true", "dataset": lay.dataset, "blend.members": ",".join(m.name for m in members),
            "submission.sha256": record["sha256"], "submission.csv": str(lay.submission), **tracking.git_info()}
    for m in members:
        tags[f"blend.member.{m.name}.run_id"] = m.run_id or ""
        tags[f"blend.member.{m.name}.weight"] = f"{result['weights'][m.name]:.6f}"
    numbers = {k: v for k, v in result.items() if isinstance(v, float)}
    numbers.update({f"member.{name}.{k}": v for name, s in result["members"].items() for k, v in s.items()})
    with tracking.training_run(cfg, lay.name, tags=tags) as run_:
        run_.log_params(tracking.config_params(cfg))
        run_.log_metrics(numbers)
        run_.log_files({"submission": [lay.submission, lay.submission_record], "evaluation": [lay.metrics],
                        "plots": [lay.val_predictions]})


if __name__ == "__main__":
    from .cli import main

    main("blend")
