"""Stage 2, train: manifests -> a Keras model (best epoch by validation log loss), tracked in MLflow.

    python -m src.train dataset=demo model=seed_cnn train.epochs=3 train.batch_size=32
    python -m src.train -m train.lr=1e-3,3e-4                 # a sweep: one MLflow parent run, a child per job

Writes models/<dataset>/<name>/: model.keras (best epoch), history.json, run.json (MLflow run id) and
checkpoint/ (last epoch with optimizer state, for resuming a killed run; removed when training ends).
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .common import (Layout, UserError, _INTERRUPTS, atomic_path, check_interrupted, config_hash, defer_interrupt,
                     read_json, write_json)

# Config keys that define a training run: a checkpoint made under other values is not resumed.
RESUME_KEYS = ["dataset", "model", "train.epochs", "train.batch_size", "train.optimizer", "train.lr",
               "train.weight_decay", "train.momentum", "train.nesterov", "train.schedule", "train.warmup_epochs",
               "train.label_smoothing", "train.precision", "train.subset", "train.fit_on_all", "train.ema_momentum", "augment",
               "seed"]


# ------------------------------------------------------------------ hardware and precision
def accelerators() -> list[str]:
    """Visible accelerators for the active Keras backend."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    return []


def resolve_precision(requested: str) -> str:
    """auto: mixed_float16 where a GPU is visible (it pays there), float32 on the CPU (it only slows things)."""
    if requested != "auto":
        return requested
    return "mixed_float16" if accelerators() else "float32"


def _simulated_cpu_devices() -> None:
    """KAGGLEPIPE_CPU_DEVICES=n: split the CPU into n devices, so data parallelism can be tried (and tested)
    without accelerators. Only works before the backend initialises its devices, hence first in setup_runtime.
    The JAX equivalent of XLA_FLAGS=--xla_force_host_platform_device_count=n."""
    n = int(os.environ.get("KAGGLEPIPE_CPU_DEVICES") or 0)
    if n < 2:
        return
    import keras

    try:
        if keras.config.backend() == "tensorflow":
            import tensorflow as tf

            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
        elif keras.config.backend() == "jax":
            import jax

            jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # already initialised (a later job of a sweep, in the same process): keep what it has
        pass


def _initialize_multiprocess(cfg: DictConfig) -> None:
    """JAX multi-host/multi-process data parallelism: keras.distribution.initialize() joins this process to the
    cluster when the launcher sets KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's host:port, or all of them,
    comma-separated), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID (one process per host,
    same command everywhere). It must come before any computation. keras.distribution.list_devices() then lists
    every process's devices and each process feeds its share of the global batch (train.batch_size)."""
    import keras

    if cfg.train.distribute != "data_parallel" or keras.config.backend() != "jax":
        return
    if not any(k in os.environ for k in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES")):
        return
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize()


def data_parallel_devices(cfg: DictConfig) -> list[str]:
    """The devices train.distribute=data_parallel splits each batch over (GPUs, else the CPU devices); [] for none."""
    import keras

    if cfg.train.distribute != "data_parallel":
        return []
    if keras.config.backend() == "jax":
        return list(keras.distribution.list_devices())
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices("GPU")] or \
               [d.name for d in tf.config.list_logical_devices("CPU")]
    raise UserError(f"train.distribute=data_parallel is not supported on the {keras.config.backend()} backend; use none")


def setup_runtime(cfg: DictConfig) -> dict[str, str]:
    import keras

    _simulated_cpu_devices()  # both before anything initialises the backend's devices
    _initialize_multiprocess(cfg)
    keras.utils.set_random_seed(int(cfg.seed))
    policy = resolve_precision(str(cfg.train.precision))
    keras.config.set_dtype_policy(policy)
    acc = accelerators()
    replicas = len(data_parallel_devices(cfg)) or 1
    if int(cfg.train.batch_size) % replicas:
        raise UserError(f"train.batch_size={cfg.train.batch_size} does not divide over the {replicas} devices of "
                        f"train.distribute=data_parallel; use a multiple of {replicas}")
    return {"runtime.backend": keras.config.backend(), "runtime.precision": policy,
            "runtime.device": ", ".join(acc) if acc else "cpu", "runtime.replicas": str(replicas)}


def distribution_scope(cfg: DictConfig):
    """train.distribute=data_parallel: split every batch (train.batch_size, the global batch) across all visible
    devices with the framework's own tools. Build, compile or load the model inside the returned context.

    TensorFlow: a tf.distribute.MirroredStrategy scope (model, optimizer and metrics variables are mirrored; Keras
    remembers the strategy, so fit may run outside the scope; each replica gets batch_size / replicas images and
    gradients are all-reduced; BatchNormalization statistics are per replica). JAX: keras.distribution.DataParallel
    is set globally (it has to stay set for fit, which shards every batch over the device mesh); none clears it.
    """
    import contextlib

    import keras

    if keras.config.backend() == "jax":
        devices = data_parallel_devices(cfg)
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices) if devices else None)
        return contextlib.nullcontext()
    if cfg.train.distribute != "data_parallel":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices=data_parallel_devices(cfg)).scope()


def replicas_in_use(model) -> int:
    """How many devices the built model really trains on (read back from the framework, not from the config)."""
    import keras

    if keras.config.backend() == "tensorflow":
        return int(model.distribute_strategy.num_replicas_in_sync)
    if keras.config.backend() == "jax":  # DataParallel replicates every variable over the mesh
        return len(model.trainable_variables[0].value.sharding.device_set)
    return 1


def fit_layers_to_data(model, m, df, seed: int, n: int = 5000) -> None:
    """Layers computed from the data (airbench's patch whitening) see a seeded sample of the training images."""
    from .data import map_rows
    from .models import data_fitted_layers

    fitted = data_fitted_layers(model)
    if not fitted:
        return
    rows = np.sort(np.random.default_rng(seed).permutation(df["index"].to_numpy())[:n])
    images = map_rows(m.processed / "train.npy")[rows]
    for layer in fitted:
        layer.fit_to_data(images)


# ------------------------------------------------------------------ optimisation
def learning_rate(cfg: DictConfig, steps_per_epoch: int):
    import keras

    t = cfg.train
    total = max(1, int(t.epochs) * steps_per_epoch)
    warmup = int(float(t.warmup_epochs) * steps_per_epoch)
    if t.schedule == "constant":
        return float(t.lr)
    if t.schedule == "onecycle":
        warmup = warmup or max(1, int(0.25 * total))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=float(t.lr) / (10.0 if warmup else 1.0), decay_steps=max(1, total - warmup), alpha=0.0,
        warmup_target=float(t.lr) if warmup else None, warmup_steps=warmup)


def make_optimizer(cfg: DictConfig, steps_per_epoch: int):
    import keras

    t = cfg.train
    lr = learning_rate(cfg, steps_per_epoch)
    wd = float(t.weight_decay) or None
    # train.ema_momentum: keep an exponential moving average of the weights and copy it into the model at the end of
    # every epoch (so checkpoints, validation and the saved model use it); null: plain weights
    ema = {} if t.get("ema_momentum") is None else {
        "use_ema": True, "ema_momentum": float(t.ema_momentum), "ema_overwrite_frequency": steps_per_epoch}
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd, **ema)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 1e-4, **ema)
    if t.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd, **ema)
    return keras.optimizers.SGD(lr, momentum=float(t.momentum), nesterov=bool(t.nesterov), weight_decay=wd, **ema)


def compile_model(model, cfg: DictConfig, num_classes: int, steps_per_epoch: int) -> None:
    import keras

    ls = float(cfg.train.label_smoothing)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=ls)
        metrics = [keras.metrics.BinaryCrossentropy(name="log_loss"), keras.metrics.BinaryAccuracy(name="accuracy")]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=ls)
        metrics = [keras.metrics.CategoricalCrossentropy(name="log_loss"), keras.metrics.CategoricalAccuracy(name="accuracy")]
    jit = cfg.train.jit_compile
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss, metrics=metrics,
                  steps_per_execution=int(cfg.train.steps_per_execution),
                  jit_compile="auto" if jit in (None, "auto") else bool(jit))


# ------------------------------------------------------------------ checkpoints, early stopping, NaN guard
def save_model_atomic(model, path: Path) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


class TrainingState:
    """What a killed run needs to carry on: completed epochs, best score, patience used, history, MLflow run."""

    def __init__(self, directory: Path, cfg_hash: str):
        self.dir = directory
        self.file = directory / "state.json"
        self.last = directory / "last.keras"
        self.best = directory / "best.keras"
        self.cfg_hash = cfg_hash
        self.epoch = 0
        self.best_score = math.inf
        self.best_epoch = -1
        self.wait = 0
        self.history: list[dict[str, float]] = []
        self.run_id: str | None = None
        self.rng: list[list[int]] = []  # the model's random-generator states (augmentation, dropout) after `epoch`

    def load(self) -> bool:
        if not (self.file.is_file() and self.last.is_file()):
            return False
        s = read_json(self.file)
        if s.get("config_hash") != self.cfg_hash:
            print(f"train: checkpoint in {self.dir} was made with another config; starting over")
            return False
        self.epoch, self.best_score, self.best_epoch = s["epoch"], s["best_score"], s["best_epoch"]
        self.wait, self.history, self.run_id = s["wait"], s["history"], s.get("run_id")
        self.rng = s.get("rng", [])
        return True

    def save(self) -> None:
        write_json(self.file, {"config_hash": self.cfg_hash, "epoch": self.epoch, "best_score": self.best_score,
                               "best_epoch": self.best_epoch, "wait": self.wait, "history": self.history,
                               "run_id": self.run_id, "rng": self.rng})


def _callback_base():
    import keras

    return keras.callbacks.Callback


class EpochEnd(_callback_base()):  # type: ignore[misc]
    """At each epoch's end: stop on NaN, keep the best model, checkpoint for resume, log to MLflow, early-stop."""

    def __init__(self, state: TrainingState, patience: int, mlflow: Any):
        super().__init__()
        self.state, self.patience, self.mlflow = state, patience, mlflow
        self.diverged: str | None = None
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if _INTERRUPTS:  # Ctrl-C/SIGTERM (deferred, see common.defer_interrupt): leave fit at this batch's end
            self.model.stop_training = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self._t0  # training + validation pass, before any checkpoint I/O
        if _INTERRUPTS:  # an interrupted epoch is not complete: never checkpoint it
            self.model.stop_training = True
            return
        logs = {k: float(v) for k, v in (logs or {}).items()}
        bad = [k for k, v in logs.items() if not math.isfinite(v)]
        if bad:
            self.diverged = f"{bad[0]} became {logs[bad[0]]} at epoch {epoch + 1}"
            self.model.stop_training = True
            return
        st = self.state
        score = logs.get("val_log_loss", logs.get("log_loss", math.inf))
        if score < st.best_score:
            st.best_score, st.best_epoch, st.wait = score, epoch, 0
            save_model_atomic(self.model, st.best)
        else:
            st.wait += 1
        st.epoch = epoch + 1
        st.history.append({"epoch": epoch + 1, **logs, "epoch_seconds": round(seconds, 4)})
        st.rng = rng_state(self.model)
        save_model_atomic(self.model, st.last)
        st.save()  # written last: it only ever names complete checkpoint files
        if self.mlflow is not None:
            self.mlflow.log_metrics({**logs, "epoch_seconds": seconds}, step=epoch + 1)
        print(f"train: epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "learning_rate"))
        if self.patience and st.wait >= self.patience:
            print(f"train: early stop, no better val_log_loss for {self.patience} epochs (best epoch {st.best_epoch + 1})")
            self.model.stop_training = True


def _seed_states(model) -> list:
    """The state variables of every keras.random.SeedGenerator in the model (one per augmentation or dropout
    layer), in layer order. Keras does not save them with the model: a reloaded model would restart them."""
    return [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]


def rng_state(model) -> list[list[int]]:
    return [np.asarray(v.numpy()).tolist() for v in _seed_states(model)]


def restore_rng_state(model, states: list[list[int]]) -> None:
    variables = _seed_states(model)
    if len(variables) != len(states):
        print(f"train: checkpoint has {len(states)} random-generator states, the model {len(variables)}; "
              "augmentation and dropout restart from their seeds")
        return
    for v, value in zip(variables, states):
        v.assign(np.asarray(value, dtype=v.dtype))


# ------------------------------------------------------------------ plots
def plot_history(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes, ("log_loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            vals = [h.get(prefix + key) for h in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, vals, style, marker="o", label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ the stage
def _subset(df, n: int, seed: int):
    if not n or n >= len(df):
        return df
    frac = n / len(df)
    return df.groupby("label", group_keys=False).sample(frac=frac, random_state=seed).sort_index()


@contextlib.contextmanager
def exclusive(directory: Path, name: str):
    """Hold an exclusive lock on a run's model folder while training into it: a second run with the same
    dataset and name would otherwise share (and wipe) its checkpoint. The operating system drops the lock when
    the process ends, however it ends (a killed run can be resumed at once)."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another training run is writing to {directory} (name={name}); wait for it to "
                            "finish, stop it, or give this run another name=...") from None
        yield
    finally:
        os.close(fd)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; return {"run_id", "model", "best_epoch", "best_val_log_loss", "epochs_run"}."""
    lay = Layout(cfg)
    with exclusive(lay.model_dir, lay.name):
        return _train(cfg, lay)


def _train(cfg: DictConfig, lay: Layout) -> dict[str, Any]:
    from .data import load_manifests, steps_per_epoch, train_dataset, val_dataset
    from .prepare import ensure_prepared

    processed = ensure_prepared(cfg)
    m = load_manifests(processed)
    if m.val.empty:
        raise UserError(f"{processed / 'train.csv'} has no validation images; raise dataset.val_fraction")
    train_df = _subset(m.train, int(cfg.train.subset), int(cfg.seed))
    if cfg.train.fit_on_all:
        train_df = pd.concat([train_df, m.val], ignore_index=True)
    runtime = setup_runtime(cfg)
    bs = int(cfg.train.batch_size)
    steps = max(1, steps_per_epoch(len(train_df), bs))  # what the epoch stream yields per epoch

    state = TrainingState(lay.checkpoint_dir, config_hash(cfg, RESUME_KEYS))
    resumed = bool(cfg.train.resume) and state.load()
    if not resumed and lay.checkpoint_dir.exists():
        shutil.rmtree(lay.checkpoint_dir)
    lay.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    tags = {"dataset": cfg.dataset.name, "model": cfg.model.name, "hydra.overrides": tracking.hydra_overrides(),
            "dataset.fingerprint": m.fingerprint(), **tracking.git_info(), **runtime}
    with tracking.run(cfg, lay.name, run_id=state.run_id if resumed else None, tags=tags) as mlflow:
        if mlflow is not None:
            state.run_id = mlflow.active_run().info.run_id
            tracking.log_params_once(mlflow, tracking.config_params(cfg))
            config_yaml = lay.model_dir / "config.yaml"
            with atomic_path(config_yaml) as tmp:
                tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
            mlflow.log_artifact(str(config_yaml))
            mlflow.set_tags({"hydra.overrides": tracking.hydra_overrides(), "resumed": str(resumed).lower()})
        print(f"train: {cfg.model.name} on {cfg.dataset.name}: {len(train_df)} train / {len(m.val)} val images, "
              f"{runtime['runtime.precision']} on {runtime['runtime.device']} ({runtime['runtime.backend']})"
              + (f"; resuming after epoch {state.epoch}" if resumed else ""))

        import keras

        from .models import CUSTOM_OBJECTS, build_model

        with distribution_scope(cfg):
            if resumed:
                model = keras.saving.load_model(state.last, custom_objects=CUSTOM_OBJECTS)
                restore_rng_state(model, state.rng)
            else:
                model = build_model(cfg.model, m.image_shape, m.num_classes, cfg.augment, int(cfg.seed))
                fit_layers_to_data(model, m, train_df, int(cfg.seed))
                compile_model(model, cfg, m.num_classes, steps)
        if cfg.train.distribute == "data_parallel":
            print(f"train: data parallel over {replicas_in_use(model)} replicas")
        # Epoch e's batches depend on (seed, e) only and the generators' states come back with the checkpoint,
        # so a resumed run trains on what an uninterrupted one would have.
        train_ds = train_dataset(m, bs, int(cfg.seed), int(cfg.train.shuffle_buffer), df=train_df,
                                 first_epoch=state.epoch, mixup=float(cfg.augment.get("mixup") or 0),
                                 cutmix=float(cfg.augment.get("cutmix") or 0))
        val_ds = val_dataset(m, max(bs, 64))
        cb = EpochEnd(state, int(cfg.train.early_stopping_patience), mlflow)
        stopped_early = False
        t0 = time.perf_counter()
        if state.epoch < int(cfg.train.epochs) and not (state.wait >= int(cfg.train.early_stopping_patience) > 0):
            check_interrupted()
            prev = {sig: signal.signal(sig, defer_interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                model.fit(train_ds, validation_data=val_ds, epochs=int(cfg.train.epochs), initial_epoch=state.epoch,
                          steps_per_epoch=steps, callbacks=[cb], shuffle=False, verbose=2 if os.environ.get("KAGGLEPIPE_VERBOSE") else 0)
            finally:
                for sig, handler in prev.items():
                    signal.signal(sig, handler)
            check_interrupted()  # raises KeyboardInterrupt now that fit has returned: the MLflow run ends KILLED
        fit_seconds = time.perf_counter() - t0
        if cb.diverged:
            kept = (f"the best checkpoint so far (epoch {state.best_epoch + 1}) is kept in {state.best}"
                    if state.best.is_file() else "no epoch finished before it, so there is no checkpoint")
            hint = "" if runtime["runtime.precision"] == "float32" else " or use train.precision=float32"
            raise UserError(f"training diverged: {cb.diverged}; {kept}; lower train.lr (now {cfg.train.lr}){hint}")
        if not state.best.is_file():
            raise UserError(f"training produced no checkpoint in {state.dir}; check the logs above")
        stopped_early = state.epoch < int(cfg.train.epochs)

        with atomic_path(lay.model, suffix=".keras") as tmp:
            shutil.copyfile(state.best, tmp)
        write_json(lay.history, state.history)
        plot_history(state.history, lay.plots / "learning_curve.png")
        summary = {"run_id": state.run_id, "name": lay.name, "dataset": cfg.dataset.name, "model": str(lay.model),
                   "best_epoch": state.best_epoch + 1, "best_val_log_loss": state.best_score,
                   "epochs_run": state.epoch, "stopped_early": stopped_early, "fit_seconds": round(fit_seconds, 2),
                   "tracking_uri": tracking.tracking_uri(cfg) if tracking.enabled(cfg) else None, **runtime}
        write_json(lay.run_info, summary)
        if mlflow is not None:
            mlflow.log_metrics({"best_val_log_loss": state.best_score, "best_epoch": state.best_epoch + 1,
                                "epochs_run": state.epoch, "fit_seconds": fit_seconds})
            tracking.log_artifact(mlflow, lay.plots / "learning_curve.png", "plots")
            tracking.log_artifact(mlflow, lay.history)
            tracking.log_artifact(mlflow, lay.model, "model")
        shutil.rmtree(lay.checkpoint_dir, ignore_errors=True)  # finished: the next run with this name starts afresh
    print(f"train: best epoch {state.best_epoch + 1} val_log_loss={state.best_score:.4f}; model -> {lay.model}")
    return summary


def main() -> None:
    import hydra

    from .common import cli, precheck_overrides

    precheck_overrides()

    @hydra.main(config_path="../conf", config_name="config", version_base="1.3")
    @cli
    def _run(cfg: DictConfig) -> None:
        train(cfg)

    _run()


if __name__ == "__main__":
    main()
