"""Out-of-fold (OOF) predictions: what a member's models predicted for images none of them trained on.

A cross-validated member (cv.folds=k) has k fold models; each predicted its held-out fold and the test set
(models/<dataset>/<name>/fold-<i>/predictions/). assemble() joins them, once evaluate asks:

    predictions/<dataset>/<name>/oof.csv    id, fold, label, p_<class>...   every labelled image exactly once
    predictions/<dataset>/<name>/test.csv   id, ok, p_<class>...            the fold models' average (cv.average)

each with a .json: the member, its split (folds, split seed), the classes, the averaging rule, and the MLflow
runs (the member's and every fold's). A single-split member's OOF is its validation fold (its model's own
predictions/val.csv). load() reads either kind, for evaluate, predict and blend: one model on one split is a
member of one fold.
"""
from __future__ import annotations

import itertools
import os
import shlex
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from . import inference, manifests
from .errors import UserError
from .files import atomic_path, file_sha256, read_json, write_json
from .inference import Predictions
from .paths import Layout

EPS = 1e-15


@dataclass
class Member:
    name: str
    oof: Predictions          # id, fold, label, p_<class>...
    test: Predictions | None  # id, ok, p_<class>... (None where only the OOF is needed)

    @property
    def labels(self) -> np.ndarray:
        return self.oof.frame["label"].to_numpy()

    @property
    def run_id(self) -> str | None:
        """The MLflow run its results are attached to: the member's parent run, or the single model's run."""
        return self.oof.meta.get("member_run_id")


def fold_config(cfg: DictConfig, fold: int) -> DictConfig:
    out = cfg.copy()
    with open_dict(out):
        out.cv.fold = int(fold)
    return out


def average(probs: Iterable[np.ndarray], rule: str) -> np.ndarray:
    """The mean of several models' probabilities (P(class 1), or rows of class probabilities): as probabilities,
    or as logits (binary: the sigmoid of the mean logit; classes: the softmax of the mean log probability).
    A running sum: one model's array is held at a time (5 folds x 300,000 CIFAR-10 test rows x 10 classes would
    otherwise be stacked at once)."""
    total, n = None, 0
    for q in probs:
        q = np.asarray(q, dtype=np.float64)
        if rule != "probability":
            q = np.clip(q, EPS, 1 - EPS)
            q = np.log(q) - np.log1p(-q) if q.ndim == 1 else np.log(q)
        total, n = (q if total is None else total + q), n + 1
    mean = total / n
    if rule == "probability":
        return mean
    if mean.ndim == 1:
        return 1.0 / (1.0 + np.exp(-mean))
    z = np.exp(mean - mean.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def assemble(cfg: DictConfig) -> Member:
    """Join a cross-validated member's fold predictions into its OOF and averaged test files; return them."""
    lay = Layout(cfg)
    folds = [fold_config(cfg, i) for i in range(int(cfg.cv.folds))]
    val = [_fold_predictions(c, "val") for c in folds]
    frame = pd.concat([v.frame.assign(fold=i) for i, v in enumerate(val)], ignore_index=True)
    frame = frame[["id", "fold", "label", *[c for c in frame.columns if c.startswith("p_")]]]
    _check_covers_every_image(frame, lay)
    classes = val[0].meta["classes"]
    meta = {"member": lay.name, "dataset": lay.dataset, "classes": classes, "average": str(cfg.cv.average),
            "scheme": {"kind": "cv", "folds": int(cfg.cv.folds), "seed": int(cfg.dataset.split_seed)},
            "member_run_id": _member_run(lay), "fold_runs": [v.meta.get("run_id") for v in val],
            "fold_models": [v.meta["model_sha256"] for v in val], "tta": val[0].meta["tta"]}
    first = _fold_predictions(folds[0], "test")
    test_frame = first.frame[["id", "ok"]].copy()
    others = (_fold_predictions(c, "test").probs() for c in folds[1:])  # read one fold at a time
    p = average(itertools.chain([first.probs()], others), str(cfg.cv.average))
    for i, c in enumerate(classes):
        test_frame[f"p_{c}"] = (np.stack([1 - p, p], axis=1) if p.ndim == 1 else p)[:, i]
    _write(lay.oof, frame, {**meta, "split": "oof"})
    _write(lay.oof_test, test_frame, {**meta, "split": "test"})
    return Member(lay.name, inference.read(lay.oof), inference.read(lay.oof_test))


def _fold_predictions(cfg: DictConfig, split: str) -> Predictions:
    lay = Layout(cfg)
    if not lay.model.is_file():
        raise UserError(f"fold {lay.fold} of {lay.name} has no model ({lay.model}); train it: "
                        f"{how_to_train(lay, f'cv.fold={lay.fold}')}")
    return inference.predictions(cfg, lay, split)


def how_to_train(lay: Layout, *extra: str) -> str:
    """The command that trains a member's missing folds (with extra overrides: cv.fold=i, one of them), for a
    stage that finds them missing or stale. The member's own recipe (an experiment, overrides) is not in that
    stage's config: member.json has the command its folds were trained with."""
    command = read_json(lay.member_record).get("train_command") if lay.member_record.is_file() else None
    if command is None:  # trained outside a command line, or before member.json kept the command
        default = [f"dataset={lay.dataset}", f"name={lay.name}", f"cv.folds={lay.folds}", *extra]
        return (f"python -m src.train {shlex.join(default)} plus the overrides that trained {lay.name} (its MLflow "
                "runs' tag hydra.overrides)")
    return f"python -m src.train {shlex.join([*command, *extra])}"


def _check_covers_every_image(frame: pd.DataFrame, lay: Layout) -> None:
    m = manifests.load(lay)
    every = pd.concat([m.train["id"], m.val["id"]]).astype(str)
    ids = frame["id"].astype(str)
    if ids.duplicated().any() or set(ids) != set(every):
        raise UserError(f"the folds of {lay.name} do not cover the {len(every)} training images once each "
                        f"({len(ids)} OOF rows, {ids.nunique()} distinct); the data changed since they were trained: "
                        f"train them again: {how_to_train(lay, 'train.resume=false')}")


def record_member(lay: Layout, **fields) -> None:
    """member.json, a cross-validated member's record: its folds, its MLflow parent run (null until one exists)
    and the command that trains its folds; the fields given replace those there, the others are kept."""
    old = read_json(lay.member_record) if lay.member_record.is_file() else {"run_id": None}
    new = {k: v for k, v in fields.items() if v is not None}
    write_json(lay.member_record, {**old, "folds": int(lay.folds), **new})


def train_command(lay: Layout) -> list[str] | None:
    """This training's command line as one that trains any fold of its member: its overrides without cv.fold and
    name, then name=<member> (a sweep job's member is <name>-<job number>). None outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    overrides = HydraConfig.get().overrides.task
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("cv.fold", "name")]
    return [*keep, f"name={lay.name}"]


def _member_run(lay: Layout) -> str | None:
    return read_json(lay.member_record).get("run_id") if lay.member_record.is_file() else None


def _write(csv, frame: pd.DataFrame, meta: dict) -> None:
    with atomic_path(csv, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_json(csv.with_suffix(".json"), {**meta, "rows": len(frame), "csv_sha256": file_sha256(csv)})


def load(cfg: DictConfig, name: str) -> Member:
    """Any member's OOF and test predictions, by the name it was trained under: a cross-validated member's
    assembled files (assembled first if missing or stale, outside DVC), else a single model's validation and
    test predictions."""
    lay = Layout(OmegaConf.merge(cfg, {"name": name, "cv": {"folds": None, "fold": None}}))
    if lay.member_record.is_file() and not os.environ.get("DVC_STAGE"):  # cross-validated; DVC keeps it current
        member_cfg = trained_config(cfg, name, int(read_json(lay.member_record)["folds"]))
        if not is_current(member_cfg):
            return assemble(member_cfg)
    if lay.oof.is_file() and lay.oof_test.is_file():
        return Member(name, inference.read(lay.oof), inference.read(lay.oof_test))
    single = lay.member_dir / "predictions"
    if (single / "val.csv").is_file() and (single / "test.csv").is_file():
        val, test = inference.read(single / "val.csv"), inference.read(single / "test.csv")
        val.frame.insert(1, "fold", "val")
        run = read_json(lay.run_info).get("run_id") if lay.run_info.is_file() else val.meta.get("run_id")
        scheme = {"kind": "holdout", "seed": int(cfg.dataset.split_seed)}
        for p in (val, test):
            p.meta.update(member=name, dataset=lay.dataset, scheme=scheme, member_run_id=run, fold_runs=[run])
        return Member(name, val, test)
    raise UserError(f"member {name!r} has no out-of-fold predictions in {lay.oof.parent} or {single}; evaluate it "
                    f"first: python -m src.evaluate dataset={lay.dataset} name={name} cv.folds=<its folds> "
                    "(or train it)")


def trained_config(cfg: DictConfig, name: str, folds: int) -> DictConfig:
    """The config a cross-validated member's folds were trained with (fold 0's config.yaml: its model, TTA,
    augmentation), for a caller with another config (a blend); this project's paths and tracking kept. Without
    the file (an older member), the caller's config under the member's name."""
    member = OmegaConf.merge(cfg, {"name": name, "cv": {"folds": folds, "fold": None}})
    saved = Layout(fold_config(member, 0)).config_yaml
    if not saved.is_file():
        return member
    return OmegaConf.merge(OmegaConf.load(saved), {"paths": cfg.paths, "tracking": cfg.tracking,
                                                   "cv": {"folds": folds, "fold": None}})


def is_current(cfg: DictConfig) -> bool:
    """The member's OOF and test files are whole and were assembled from its current fold models."""
    lay = Layout(cfg)
    for csv in (lay.oof, lay.oof_test):
        if not (csv.is_file() and csv.with_suffix(".json").is_file()):
            return False
        meta = read_json(csv.with_suffix(".json"))
        if meta.get("csv_sha256") != file_sha256(csv) or meta.get("average") != str(cfg.cv.average):
            return False
    folds = [fold_config(cfg, i) for i in range(int(cfg.cv.folds))]
    models = [Layout(c).model for c in folds]
    if not all(m.is_file() for m in models) or meta.get("fold_models") != [file_sha256(m) for m in models]:
        return False
    return all(inference.is_current(c, Layout(c), s) for c in folds for s in inference.SPLITS)


def test_predictions(cfg: DictConfig) -> Predictions:
    """The member's test probabilities: the fold average (assembled by evaluate), or the single model's."""
    lay = Layout(cfg)
    return inference.read(lay.oof_test) if lay.folds else inference.predictions(cfg, lay, "test")
