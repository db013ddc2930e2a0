"""The stage order, and the one place that runs what a stage needs first.

    prepare -> train -> evaluate -> predict

`python -m src.<stage>` runs through here: the stages before it that are not current are brought up to date first
(prepare and evaluate are run; train, the expensive one, is never run behind the user's back: a missing model is a
one-line error naming the command). Inside a DVC stage (DVC sets DVC_STAGE) DVC decides what is stale by content,
so nothing is rerun here: a missing input is a one-line error naming the DVC stage to run.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from omegaconf import DictConfig

from .errors import UserError
from .paths import Layout

ORDER = ("prepare", "train", "evaluate", "predict")


def stage(name: str):
    """A stage's module: run(cfg) does the stage; prepare and evaluate also say is_current(cfg)."""
    return importlib.import_module(f"src.{name}")


def run(cfg: DictConfig, target: str, **options: Any) -> Any:
    """Bring the stages before `target` up to date, then run it (options go to its run, e.g. train's callbacks)."""
    prerequisites(cfg, target)
    return stage(target).run(cfg, **options)


def prerequisites(cfg: DictConfig, target: str) -> None:
    """Bring the stages before `target` up to date (a command that runs `target` many times does this once)."""
    for name in ORDER[:ORDER.index(target)] if target in ORDER else ():
        _bring_up_to_date(cfg, name, target)


def _bring_up_to_date(cfg: DictConfig, name: str, target: str) -> None:
    if os.environ.get("DVC_STAGE"):
        if not _outputs_exist(cfg, name):
            raise UserError(f"the {name} stage's outputs are missing; run it first: dvc repro {name}")
        return
    if name == "train":  # the expensive stage: a model that is there is used as it is
        _require_models(cfg)
        return
    if stage(name).is_current(cfg):
        return
    print(f"{target}: the {name} stage's outputs are missing or out of date; running {name} first")
    stage(name).run(cfg)


def _require_models(cfg: DictConfig) -> None:
    """The trained model, or for a cross-validated member every fold's: else one line naming the command."""
    lay = Layout(cfg)
    if lay.folds and lay.fold is None:
        from .oof import fold_config, how_to_train

        missing = [i for i in range(int(lay.folds)) if not Layout(fold_config(cfg, i)).model.is_file()]
        if missing:
            raise UserError(f"{lay.name} has no model for fold(s) {missing} of {lay.folds}; train them first "
                            f"(the command trains the missing folds): {how_to_train(lay)}")
    elif not lay.model.is_file():
        raise UserError(f"{lay.model} not found; train it first: python -m src.train dataset={lay.dataset} "
                        f"name={lay.name}")


def _outputs_exist(cfg: DictConfig, name: str) -> bool:
    lay = Layout(cfg)
    if name == "prepare":
        return stage("prepare").is_complete(cfg)
    if name == "train" and lay.folds and lay.fold is None:
        from .oof import fold_config

        return all(Layout(fold_config(cfg, i)).model.is_file() for i in range(int(lay.folds)))
    return {"train": lay.model, "evaluate": lay.metrics}[name].is_file()
