"""Stage 2, train: the prepared images -> a Keras model (the best epoch by validation log loss) and its
validation and test probabilities, tracked in MLflow.

    python -m src.train dataset=demo model=seed_cnn train.epochs=3 train.batch_size=32
    python -m src.train -m train.lr=1e-3,3e-4                 # a sweep: one MLflow parent run, a child per job

Writes models/<dataset>/<name>/: model.keras (the best epoch), history.json, config.yaml (the composed config),
run.json (the MLflow run and what ran), predictions/ (src/inference.py), and while it runs checkpoint/ (resume
after a kill: src/checkpoint.py). Hardware, precision and distribution: src/runtime.py; the optimiser and loss:
src/optimizer.py.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Sequence

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from . import (checkpoint, features, finetune, inference, interrupts, manifests, multiprocess, oof, plots, progress,
               runtime, tracking)
from .errors import UserError
from .files import read_json, write_json, write_text
from .manifests import Manifests
from .paths import Layout


def run(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the configured model (with cv.folds and no cv.fold: every fold in turn); return its summary.
    callbacks: Keras callbacks run after each epoch's checkpoint (a search's pruning: src/search.py)."""
    if cfg.cv.folds and cfg.cv.fold is None:
        return train_folds(cfg, callbacks)
    return train_one(cfg, callbacks)


def train_folds(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Every fold of a cross-validated member, under one MLflow parent run. Folds already trained with this config
    are kept, a killed fold resumes from its checkpoint, the others train: the same command finishes the member."""
    lay = Layout(cfg)
    record = read_json(lay.member_record) if lay.member_record.is_file() else {}
    tags = {"dataset": lay.dataset, "model": str(cfg.model.name), "member": lay.name, "cv.folds": str(cfg.cv.folds),
            "hydra.overrides": tracking.hydra_overrides(), **tracking.git_info()}
    with tracking.parent_run(cfg, f"cv-{lay.name}", record.get("run_id"), tags) as parent:
        oof.record_member(lay, run_id=parent.id, train_command=oof.train_command(lay))
        parent.log_params(tracking.config_params(cfg))
        folds = []
        for fold in range(int(cfg.cv.folds)):
            fold_cfg = oof.fold_config(cfg, fold)
            done = trained(fold_cfg)
            if done:
                print(f"train: fold {fold} of {lay.name} is already trained with this config; kept")
            folds.append(done or train_one(fold_cfg, callbacks))
        scores = np.array([f["best_val_log_loss"] for f in folds])
        parent.log_metrics({"folds_best_val_log_loss_mean": float(scores.mean()),
                            "folds_best_val_log_loss_std": float(scores.std())})
    print(f"train: {lay.name}: {len(folds)} folds, best val_log_loss {scores.mean():.4f} +- {scores.std():.4f}")
    return {"member": lay.name, "run_id": parent.id, "folds": folds}


def trained(cfg: DictConfig) -> dict[str, Any] | None:
    """The run's summary if it finished training with this very config on the current prepared data. Predictions
    that are missing or stale (deleted, or written under an older data fingerprint) are remade from its model, not
    retrained: its checkpoints are gone, so training again would start from epoch 1."""
    lay = Layout(cfg)
    if not (lay.run_info.is_file() and lay.model.is_file()):
        return None
    summary = read_json(lay.run_info)
    if summary.get("config_hash") != checkpoint.config_hash(cfg):
        return None
    stale = tuple(s for s in inference.SPLITS if not inference.is_current(cfg, lay, s))
    if not stale:
        return summary
    m = manifests.for_run(cfg, lay)
    if summary.get("data") != m.fingerprint():  # trained on other data (or too old a run.json to say): train again
        return None
    print(f"train: {lay.model_dir}: the model is current but its {', '.join(stale)} predictions are not; "
          "predicting again")
    inference.write(cfg, lay, m, splits=stale)
    return summary


def train_one(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one model (one fold of a cross-validated member); return its summary (run.json). In a multi-process
    job (src/multiprocess.py) every process trains and only process 0 writes (lock, MLflow, checkpoints, outputs)."""
    lay = Layout(cfg)
    rt = runtime.setup(cfg)
    chief = multiprocess.is_chief()
    if chief and lay.folds:  # also a fold trained on its own: mark the member, keep how its folds train
        oof.record_member(lay, train_command=oof.train_command(lay))
    with checkpoint.exclusive(lay) if chief else contextlib.nullcontext():
        m = manifests.for_run(cfg, lay)
        rows = training_rows(cfg, m)
        state, resumed = checkpoint.start(cfg, lay, writes=chief)
        data = m.fingerprint()
        tags = {"dataset": lay.dataset, "model": str(cfg.model.name), "hydra.overrides": tracking.hydra_overrides(),
                "dataset.fingerprint": data, "resumed": str(resumed).lower(), **tracking.git_info(), **rt,
                **({"member": lay.name, "cv.folds": str(lay.folds), "cv.fold": str(lay.fold)} if lay.folds else {})}
        run_name = f"{lay.name}-fold{lay.fold}" if lay.folds else lay.name
        opened = (tracking.training_run(cfg, run_name, state.run_id if resumed else None, tags) if chief
                  else contextlib.nullcontext(tracking.Run()))
        with opened as run_:
            multiprocess.on_abort(run_.fail)
            state.run_id = run_.id
            if chief:
                _record_config(cfg, lay, run_)
            print(f"train: {cfg.model.name} on {lay.dataset}: {len(rows)} train / {len(m.val)} val images, "
                  f"{rt['runtime.precision']} on {rt['runtime.device']} ({rt['runtime.backend']})"
                  + (f"; resuming after epoch {state.epoch}" if resumed else ""))
            fit_seconds, callback = _fit(cfg, m, rows, state, run_, rt["runtime.precision"], callbacks, chief)
            if not chief:
                print(f"train: process {multiprocess.index()} of {multiprocess.count()} done; process 0 writes the outputs")
                return {"process": multiprocess.index(), "epochs_run": state.epoch, "best_epoch": state.best_epoch + 1}
            summary = _publish(cfg, lay, state, rt, fit_seconds, callback, data)
            inference.write(cfg, lay, m)
            run_.log_metrics({"best_val_log_loss": state.best_score, "best_epoch": state.best_epoch + 1,
                              "epochs_run": state.epoch, "fit_seconds": fit_seconds})
            run_.log_files({"plots": [lay.learning_curve], None: [lay.history], "model": [lay.model]})
            checkpoint.clear(lay)
    print(f"train: best epoch {state.best_epoch + 1} val_log_loss={state.best_score:.4f}; model -> {lay.model}")
    return summary


def training_rows(cfg: DictConfig, m: Manifests) -> pd.DataFrame:
    """The images to train on: the training fold (a stratified subset with train.subset), plus the validation
    fold with train.fit_on_all (a final fit; validation scores become optimistic)."""
    if m.val.empty:
        raise UserError(f"{m.files[0]} has no validation images; raise dataset.val_fraction")
    rows, n = m.train, int(cfg.train.subset)
    if n and n < len(rows):
        rows = rows.groupby("label", group_keys=False).sample(frac=n / len(rows), random_state=int(cfg.seed)).sort_index()
    return pd.concat([rows, m.val], ignore_index=True) if cfg.train.fit_on_all else rows


def _record_config(cfg: DictConfig, lay: Layout, run_: tracking.Run) -> None:
    write_text(lay.config_yaml, OmegaConf.to_yaml(cfg, resolve=True))
    run_.log_params(tracking.config_params(cfg))
    run_.log_files({None: [lay.config_yaml]})


def _model(cfg: DictConfig, m: Manifests, rows: pd.DataFrame, state: checkpoint.TrainingState, steps: int):
    """The checkpoint's model when resuming, or a new one (its data-fitted layers fitted on training images),
    compiled."""
    if state.epoch > 0:
        return checkpoint.restore(state)
    from .models import build_model, data_fitted_layers
    from .optimizer import compile_model

    model = build_model(cfg.model, m.image_shape, m.num_classes, cfg.augment, int(cfg.seed))
    fitted = data_fitted_layers(model)
    if fitted:  # airbench's patch whitening: a seeded sample of up to 5,000 training images
        from .data import map_rows

        sample = np.sort(np.random.default_rng(int(cfg.seed)).permutation(rows["index"].to_numpy())[:5000])
        for layer in fitted:
            layer.fit_to_data(map_rows(m.train_images)[sample])
    phase_1 = finetune.start(model, cfg, state, steps) if finetune.enabled(cfg) else None  # its own optimiser
    compile_model(model, cfg, m.num_classes, steps, phase_1)
    return model


def _fit(cfg: DictConfig, m: Manifests, rows: pd.DataFrame, state: checkpoint.TrainingState,
         run_: tracking.Run, precision: str, callbacks: Sequence[Any] = (),
         writes: bool = True) -> tuple[float, checkpoint.EpochEnd]:
    """Fit from the state's epoch to train.epochs (early stopping, checkpoints; with train.finetune phase 1 then
    phase 2); the seconds it took, and the epoch-end callback that holds the best epoch. `callbacks` are the
    caller's extra Keras callbacks (a search trial's pruning); writes=False in the other processes of a
    multi-process job. The frozen-feature mode fits its head instead (src/features.py)."""
    from .data import steps_per_epoch

    shard = runtime.multiprocess_shard(cfg)  # several processes: each feeds its part of every global batch
    steps = max(1, steps_per_epoch(len(rows), int(cfg.train.batch_size), drop_remainder=shard is not None))
    callback = checkpoint.EpochEnd(state, int(cfg.train.early_stopping_patience), run_,
                                   int(cfg.train.checkpoint_every), writes)
    if features.is_features(cfg):
        return features.fit(cfg, m, rows, state, run_), callback
    t0 = time.perf_counter()
    with runtime.distribution(cfg):
        model = _model(cfg, m, rows, state, steps)
        if cfg.train.distribute == "data_parallel":
            print(f"train: data parallel over {runtime.replicas_in_use(model)} replicas")
        every = [*progress.train_callbacks(int(cfg.train.epochs), steps), callback, *callbacks]
        while not (state.finished(cfg) or callback.diverged):
            if finetune.phase_over(cfg, state):
                from .optimizer import compile_model

                compile_model(model, cfg, m.num_classes, steps, finetune.begin_phase_2(model, cfg, state, steps))
            _fit_phase(cfg, m, rows, state, model, every, steps, shard)
            if not finetune.phase_over(cfg, state):
                break  # only the end of phase 1 goes round again; otherwise fit ended the run (or was stopped)
    _check_outcome(cfg, state, callback, precision, writes)
    return time.perf_counter() - t0, callback


def _fit_phase(cfg: DictConfig, m: Manifests, rows: pd.DataFrame, state: checkpoint.TrainingState, model,
               callbacks: list[Any], steps: int, shard) -> None:
    """model.fit from the state's epoch to the end of its phase (train.epochs for a one-phase run); `shard`: this
    process's part of every global batch (whole batches only), or None."""
    from .data import train_dataset, val_dataset

    bs = int(cfg.train.batch_size)
    end = finetune.phase_end(cfg, state) if state.phase else int(cfg.train.epochs)
    # Epoch e's batches depend on (seed, e) only and the generators' states come back with the
    # checkpoint, so a resumed run trains on what an uninterrupted one would have.
    train_ds = train_dataset(m, bs, int(cfg.seed), df=rows, first_epoch=state.epoch, shard=shard,
                             drop_remainder=shard is not None, mixup=float(cfg.augment.mixup),
                             cutmix=float(cfg.augment.cutmix))
    with interrupts.deferred():  # Ctrl-C/SIGTERM stop fit at a batch end; raised once it returns
        model.fit(train_ds, validation_data=val_dataset(m, max(bs, 64), shard=shard),
                  validation_freq=int(cfg.train.validation_freq),
                  epochs=end, initial_epoch=state.epoch, steps_per_epoch=steps,
                  callbacks=callbacks, shuffle=False, verbose=progress.fit_verbosity())


def _check_outcome(cfg: DictConfig, state: checkpoint.TrainingState, callback: checkpoint.EpochEnd,
                   precision: str, writes: bool = True) -> None:
    if callback.diverged:
        kept = (f"the best checkpoint so far (epoch {state.best_epoch + 1}) is kept in {state.best}"
                if state.best.is_file() else "there is no checkpoint of an earlier epoch")
        hint = "" if precision == "float32" else " or use train.precision=float32"
        raise UserError(f"training diverged: {callback.diverged}; {kept}; lower train.lr (now {cfg.train.lr}){hint}")
    if writes and not callback.has_best():
        raise UserError(f"training produced no checkpoint in {state.dir}; check the logs above")


def _publish(cfg: DictConfig, lay: Layout, state: checkpoint.TrainingState, rt: dict[str, str],
             fit_seconds: float, callback: checkpoint.EpochEnd, data: str) -> dict[str, Any]:
    """model.keras (the best epoch), history.json, the learning curve and run.json (with `data`, the fingerprint of
    the prepared data it was trained on)."""
    callback.write_best(lay.model)
    write_json(lay.history, state.history)
    plots.learning_curve(state.history, lay.learning_curve)
    summary = {"run_id": state.run_id, "name": lay.name, "dataset": lay.dataset, "model": str(lay.model),
               "fold": lay.fold if lay.folds else None, "config_hash": checkpoint.config_hash(cfg),
               "best_epoch": state.best_epoch + 1, "best_val_log_loss": state.best_score, "epochs_run": state.epoch,
               "stopped_early": state.epoch < int(cfg.train.epochs) and not features.is_features(cfg),
               "fit_seconds": round(fit_seconds, 2), "data": data,
               "tracking_uri": tracking.tracking_uri(cfg) if tracking.enabled(cfg) else None, **rt}
    write_json(lay.run_info, summary)
    return summary


if __name__ == "__main__":
    from .cli import main

    main("train")
