"""Resume: everything a killed run needs to carry on exactly where it stopped, and the lock that keeps two runs
out of one model folder.

At the end of every epoch (EpochEnd) the model with its optimizer state goes to checkpoint/last.keras, the best
so far (by val_log_loss) to checkpoint/best.keras, and then state.json: completed epochs, best score, patience
used, history, the MLflow run id and the states of the model's random generators (augmentation, dropout: Keras
does not save them with a model). state.json is written last, so it only ever names complete files. The same
command resumes from it (train.resume=true); a checkpoint made under other training keys starts over. Together
with epoch streams ordered by (seed, epoch) only (src/data.py), a resumed run trains exactly as an uninterrupted
one would have. The checkpoint is removed when the run finishes.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from . import interrupts
from .files import atomic_path, locked, read_json, short_hash, write_json
from .finetune import NAMES
from .paths import Layout

# Config keys that define a training run: a checkpoint made under other values is not resumed (train.finetune too,
# when fine-tuning is on: config_hash).
RESUME_KEYS = ["dataset", "model", "train.epochs", "train.batch_size", "train.optimizer", "train.lr",
               "train.weight_decay", "train.momentum", "train.nesterov", "train.schedule", "train.warmup_epochs",
               "train.label_smoothing", "train.precision", "train.subset", "train.fit_on_all", "train.ema_momentum",
               "augment", "seed", "cv.folds", "cv.fold"]


class TrainingState:
    """What a killed run needs to carry on: completed epochs, best score, patience used, history, MLflow run."""

    def __init__(self, lay: Layout, cfg_hash: str):
        self.dir, self.file = lay.checkpoint_dir, lay.checkpoint_state
        self.last, self.best = lay.checkpoint_last, lay.checkpoint_best
        self.cfg_hash = cfg_hash
        self.epoch = 0
        self.best_score = math.inf
        self.best_epoch = -1
        self.wait = 0
        self.history: list[dict[str, float]] = []
        self.run_id: str | None = None
        self.rng: list[list[int]] = []  # the model's random-generator states (augmentation, dropout) after `epoch`
        self.phase = 0  # fine-tuning (src/finetune.py): 1 head, 2 fine-tune; 0 a one-phase run
        self.phase_start: int | None = None  # the epochs done when phase 2 began

    def load(self) -> bool:
        if not (self.file.is_file() and self.last.is_file()):
            return False
        s = read_json(self.file)
        if s.get("config_hash") != self.cfg_hash:
            print(f"train: checkpoint in {self.dir} was made with another config; starting over")
            return False
        self.epoch, self.best_score, self.best_epoch = s["epoch"], s["best_score"], s["best_epoch"]
        self.wait, self.history, self.run_id, self.rng = s["wait"], s["history"], s.get("run_id"), s.get("rng", [])
        self.phase, self.phase_start = s.get("phase", 0), s.get("phase_start")
        return True

    def save(self) -> None:
        write_json(self.file, {"config_hash": self.cfg_hash, "epoch": self.epoch, "best_score": self.best_score,
                               "best_epoch": self.best_epoch, "wait": self.wait, "history": self.history,
                               "run_id": self.run_id, "rng": self.rng, "phase": self.phase,
                               "phase_start": self.phase_start})

    def finished(self, cfg: DictConfig) -> bool:
        """Nothing left to train: every epoch ran, or patience ran out (in fine-tuning's phase 1 that only ends
        phase 1)."""
        patience = int(cfg.train.early_stopping_patience)
        stopped = patience > 0 and self.wait >= patience and self.phase != 1
        return self.epoch >= int(cfg.train.epochs) or stopped


def config_hash(cfg: DictConfig) -> str:
    """A hash of the keys that define a training run (RESUME_KEYS)."""
    names = RESUME_KEYS + (["train.finetune"] if OmegaConf.select(cfg, "train.finetune.head_epochs") else [])
    keys = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in ((k, OmegaConf.select(cfg, k)) for k in names)}
    return short_hash(keys)


def start(cfg: DictConfig, lay: Layout, writes: bool = True) -> tuple[TrainingState, bool]:
    """The run's state: resumed from the checkpoint when there is one for these training keys, else fresh. Only
    the process that writes (writes=True) clears an old checkpoint; the others of a multi-process job just read."""
    state = TrainingState(lay, config_hash(cfg))
    resumed = bool(cfg.train.resume) and state.load()
    if not writes:
        return state, resumed
    if not resumed and lay.checkpoint_dir.exists():
        shutil.rmtree(lay.checkpoint_dir)
    lay.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    return state, resumed


def restore(state: TrainingState) -> keras.Model:
    """The last checkpoint's model (weights, optimizer state) with its random generators where they were."""
    from . import models, optimizer  # noqa: F401  (register the custom layers and metric the checkpoint refers to)

    model = keras.saving.load_model(state.last)
    variables = _seed_states(model)
    if len(variables) != len(state.rng):
        print(f"train: checkpoint has {len(state.rng)} random-generator states, the model {len(variables)}; "
              "augmentation and dropout restart from their seeds")
        return model
    for v, value in zip(variables, state.rng):
        v.assign(np.asarray(value, dtype=v.dtype))
    return model


def clear(lay: Layout) -> None:
    """The run finished: the next run with this name starts afresh."""
    shutil.rmtree(lay.checkpoint_dir, ignore_errors=True)


def _seed_states(model) -> list:
    """The state variables of every keras.random.SeedGenerator in the model (one per augmentation or dropout
    layer), in layer order."""
    return [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]


def save_model_atomic(model, path: Path) -> None:
    from .runtime import outside_distribution

    with atomic_path(path, suffix=".keras") as tmp, outside_distribution():
        model.save(tmp)


class EpochEnd(keras.callbacks.Callback):
    """At each epoch's end: stop on NaN, keep the best model, checkpoint for resume, log to MLflow, early-stop.

    every: checkpoint every that many epochs (train.checkpoint_every); 0: none (speed runs, where writing two
    .keras files an epoch costs more than the epoch: the best weights stay in memory, a killed run starts over).
    writes=False (the other processes of a multi-process job): the same decisions, from the same all-reduced
    metrics, without writing anything.
    """

    # Its batch hook only reads a flag: Keras may run it off the training thread, so it never forces the step's
    # results to the host (a synchronous batch hook makes Keras turn every step's logs into Python numbers).
    async_safe = True

    def __init__(self, state: TrainingState, patience: int, run: Any, every: int = 1, writes: bool = True):
        super().__init__()
        self.state, self.patience, self.run, self.every, self.writes = state, patience, run, int(every), writes
        self.diverged: str | None = None
        self.best_weights: list | None = None
        self._t0 = time.perf_counter()

    def has_best(self) -> bool:
        return self.best_weights is not None or self.state.best.is_file()

    def write_best(self, path: Path) -> None:
        """The best epoch's model, to path (atomically)."""
        if self.best_weights is None:
            with atomic_path(path, suffix=".keras") as tmp:
                shutil.copyfile(self.state.best, tmp)
            return
        self.model.set_weights(self.best_weights)
        save_model_atomic(self.model, path)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if interrupts.pending():  # Ctrl-C/SIGTERM (deferred, see src/interrupts.py): leave fit at this batch's end
            self.model.stop_training = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._t0  # training + validation pass, before any checkpoint I/O
        if interrupts.pending():  # an interrupted epoch is not complete: never checkpoint it
            self.model.stop_training = True
            return
        logs = {k: float(v) for k, v in (logs or {}).items()}
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            self.diverged = f"{bad[0]} became {logs[bad[0]]} at epoch {epoch + 1}"
            self.model.stop_training = True
            return
        st = self.state
        phase = {"phase": st.phase} if st.phase else {}  # fine-tuning: which phase this epoch trained in
        self._checkpoint(epoch, {**logs, **phase}, seconds)
        self.run.log_metrics({**logs, **phase, "epoch_seconds": seconds}, step=epoch + 1)
        label = f" ({NAMES[st.phase]})" if st.phase else ""
        print(f"train: epoch {epoch + 1}{label}: "
              + " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "learning_rate"))
        if self.patience and st.wait >= self.patience:
            what = "phase 1 (head) ends early" if st.phase == 1 else "early stop"
            print(f"train: {what}, no better val_log_loss for {self.patience} epochs (best epoch {st.best_epoch + 1})")
            self.model.stop_training = True

    def _checkpoint(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        st = self.state
        score = logs.get("val_log_loss")  # None in an epoch train.validation_freq skips: not a candidate
        better = score is not None and score < st.best_score
        if better:
            st.best_score, st.best_epoch, st.wait = score, epoch, 0
        elif score is not None:
            st.wait += 1
        st.epoch = epoch + 1
        st.history.append({"epoch": epoch + 1, **logs, "epoch_seconds": round(seconds, 4)})
        if not self.writes:
            return
        if better and self.every:
            save_model_atomic(self.model, st.best)
        elif better:
            self.best_weights = self.model.get_weights()
        if self.every and st.epoch % self.every == 0:
            st.rng = [np.asarray(v.numpy()).tolist() for v in _seed_states(self.model)]
            save_model_atomic(self.model, st.last)
            st.save()  # written last: it only ever names complete checkpoint files


def exclusive(lay: Layout) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on a run's model folder while training into it: a second run with the same dataset
    and name would otherwise share (and wipe) its checkpoint. The operating system drops the lock when the
    process ends, however it ends (a killed run can be resumed at once)."""
    return locked(lay.model_dir, f"another training run is writing to {lay.model_dir} (name={lay.name}); wait for it "
                                 "to finish, stop it, or give this run another name=...")
