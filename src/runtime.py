"""Hardware, precision and distribution: what a training run runs on. Mixed precision is set here.

train.precision=auto gives mixed_float16 where a GPU is visible (it pays there: float32 output layer and loss,
Keras scales the loss) and float32 on a CPU (where it only slows things down). train.distribute=data_parallel
splits each batch (train.batch_size is the global batch) over every visible device with the framework's own
tools: MirroredStrategy on TensorFlow, keras.distribution.DataParallel on JAX (several processes, one per host or
per GPU, join through the KERAS_DISTRIBUTION_* variables: src/multiprocess.py).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from omegaconf import DictConfig

from . import multiprocess
from .errors import UserError


def accelerators() -> list[str]:
    """The visible accelerators of the active Keras backend."""
    import keras

    if keras.config.backend() == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_physical_devices("GPU")]
    return []


def resolve_precision(requested: str) -> str:
    """auto: mixed_float16 where a GPU is visible, float32 on the CPU."""
    if requested != "auto":
        return requested
    return "mixed_float16" if accelerators() else "float32"


def setup(cfg: DictConfig) -> dict[str, str]:
    """Seed everything, set the precision policy, join a multi-process job; what the run uses, as MLflow tags."""
    import keras

    _simulated_cpu_devices()  # both before anything initialises the backend's devices
    _initialize_multiprocess(cfg)
    keras.backend.clear_session()  # a second model in one process (folds, sweep jobs) starts as in a new process
    keras.utils.set_random_seed(int(cfg.seed))
    policy = resolve_precision(str(cfg.train.precision))
    keras.config.set_dtype_policy(policy)
    acc = accelerators()
    return {"runtime.backend": keras.config.backend(), "runtime.precision": policy,
            "runtime.device": ", ".join(acc) if acc else "cpu",
            "runtime.replicas": str(len(data_parallel_devices(cfg)) or 1)}


def check_batch_fits_devices(cfg: DictConfig) -> None:
    """train.batch_size is the global batch: it must split evenly over the data-parallel devices (of every process
    of a multi-process job, which this joins: a KERAS_DISTRIBUTION_* set that does not add up stops here)."""
    _simulated_cpu_devices()
    _initialize_multiprocess(cfg)
    if cfg.train.distribute != "data_parallel":
        return
    replicas = len(data_parallel_devices(cfg)) or 1
    if int(cfg.train.batch_size) % replicas:
        raise UserError(f"train.batch_size={cfg.train.batch_size} does not divide over the {replicas} devices of "
                        f"train.distribute=data_parallel; use a multiple of {replicas}")


def _simulated_cpu_devices() -> None:
    """KAGGLEPIPE_CPU_DEVICES=n: split the CPU into n devices, so data parallelism can be tried (and tested)
    without accelerators. Only works before the backend initialises its devices. The JAX equivalent of
    XLA_FLAGS=--xla_force_host_platform_device_count=n."""
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
    """A multi-process job (KERAS_DISTRIBUTION_* set, src/multiprocess.py): check the variables, join this process
    to the others (before any computation) and watch them. keras.distribution.list_devices() then lists every
    process's devices; each process feeds its share of every global batch (train.batch_size)."""
    import keras

    job = multiprocess.job_from_env()
    if job is None and not os.environ.get("TF_CONFIG"):
        return
    if cfg.train.distribute != "data_parallel":
        if job is not None:
            raise UserError(f"{', '.join(multiprocess.ENV)} set, but train.distribute=none: each process would train "
                            "alone; set train.distribute=data_parallel on every process (or unset them)")
        return
    if keras.config.backend() != "jax":
        multiprocess.refuse_tensorflow_multiworker()
        return
    import jax

    if job is None or jax.distributed.is_initialized():
        return
    from .paths import Layout

    multiprocess.join(job, int(cfg.train.peer_timeout))
    multiprocess.watch(job, Layout(cfg).member_dir / ".processes", int(cfg.train.peer_timeout))


def multiprocess_shard(cfg: DictConfig) -> tuple[int, int] | None:
    """(this process, processes) when several processes train together: each feeds its part of every batch."""
    n = multiprocess.count() if cfg.train.distribute == "data_parallel" else 1
    return (multiprocess.index(), n) if n > 1 else None


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


@contextlib.contextmanager
def distribution(cfg: DictConfig) -> Iterator[None]:
    """Build, compile (or load) and fit the model inside this block.

    TensorFlow: a tf.distribute.MirroredStrategy scope (model, optimizer and metrics variables are mirrored; each
    replica gets batch_size / replicas images and gradients are all-reduced; BatchNormalization statistics are per
    replica). JAX: keras.distribution.DataParallel, set for the block (fit shards every batch over the device
    mesh). Outside the block the model runs on one device again (inference, which needs no even split).
    """
    import keras

    if cfg.train.distribute != "data_parallel":
        yield
        return
    if keras.config.backend() == "jax":
        # auto_shard_dataset=False: each process's tf.data pipeline already yields only its part of every global
        # batch (src/data.py, shard=...): Keras' own sharding needs fixed batch sizes and rebatches on the fly.
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=data_parallel_devices(cfg),
                                                                            auto_shard_dataset=False))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
        return
    import tensorflow as tf

    with tf.distribute.MirroredStrategy(devices=data_parallel_devices(cfg)).scope():
        yield


@contextlib.contextmanager
def outside_distribution() -> Iterator[None]:
    """No distribution for the block (JAX): saving a model then reads its replicated variables locally, instead of
    creating the saver's own variables across every process (a collective only the saving process would join)."""
    import keras

    if keras.config.backend() != "jax" or keras.distribution.distribution() is None:
        yield
        return
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def replicas_in_use(model) -> int:
    """How many devices the built model really trains on (read back from the framework, not from the config)."""
    import keras

    if keras.config.backend() == "tensorflow":
        return int(model.distribute_strategy.num_replicas_in_sync)
    if keras.config.backend() == "jax":  # DataParallel replicates every variable over the mesh
        return len(model.trainable_variables[0].value.sharding.device_set)
    return 1
