"""Hardware and distribution (src/runtime.py): train.distribute=data_parallel on CPU with 2 simulated devices is
really 2 replicas and gives the same result as one device, on both backends (TensorFlow's MirroredStrategy, JAX's
keras.distribution.DataParallel); a global batch that does not divide over the devices stops at the config check
(config.check(cfg, "train")), before any work, and the stages that build no model are not held up by it.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import TINY, path_overrides, run_cli

# Each backend trains the same tiny run twice in one process (a Hydra sweep, `-m train.distribute=data_parallel,none`,
# so imports and prepare are paid once; data_parallel first, so the second job also checks that `none` undoes it):
# - TensorFlow: KAGGLEPIPE_CPU_DEVICES=2 splits the CPU into 2 logical devices before TensorFlow initialises
#   (src/runtime.py, _simulated_cpu_devices); tf.distribute.MirroredStrategy mirrors the model over both.
# - JAX: XLA_FLAGS=--xla_force_host_platform_device_count=2; keras.distribution.DataParallel over both.
# The model is seed_cnn without dropout: no BatchNormalization (its statistics are per replica under
# MirroredStrategy) and no per-replica randomness, so one device and two must agree up to float summation order.
# train.batch_size=64 covers the whole training set (38 images): one step per epoch, split 19/19, so the
# comparison does not depend on the shuffle order. (Under a tf.distribute strategy Keras' fit peeks at one batch
# through an extra iterator before training, which advances a reshuffle-each-iteration dataset by one epoch:
# with several steps per epoch a TensorFlow data_parallel run sees another, equally random, order of the images.)
RUN = [*TINY, "model=seed_cnn", "model.dropout=0", "augment=none", "train.batch_size=64", "tracking.enabled=false",
       "seed=7"]


def _sweep(tmp_path: Path, env: dict[str, str]) -> dict[str, dict]:
    """Run data_parallel then none in one process; return {distribute: (run.json, epoch-1 history)}."""
    r = run_cli("src.train", "-m", *RUN, *path_overrides(tmp_path), "train.distribute=data_parallel,none",
                f"hydra.sweep.dir={tmp_path}/multirun", env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = {}
    for job, mode in ((0, "data_parallel"), (1, "none")):
        d = tmp_path / "models" / "demo" / f"seed_cnn-{job}"
        info = json.loads((d / "run.json").read_text())
        history = json.loads((d / "history.json").read_text())
        out[mode] = {**info, **history[0]}
    assert "data parallel over 2 replicas" in r.stdout, r.stdout
    return out


def _check(runs: dict[str, dict], backend: str, rel: float) -> None:
    dp, one = runs["data_parallel"], runs["none"]
    assert dp["runtime.backend"] == one["runtime.backend"] == backend
    assert dp["runtime.replicas"] == "2" and one["runtime.replicas"] == "1"
    for key in ("loss", "val_log_loss", "val_accuracy"):  # val_*: after one (all-reduced) update
        assert dp[key] == pytest.approx(one[key], rel=rel, abs=1e-6), (key, dp[key], one[key])
    assert dp["loss"] > 0.1 and dp["val_log_loss"] != pytest.approx(dp["loss"], abs=1e-9)  # a real update happened


def test_tensorflow_mirrored_strategy_two_cpu_replicas(tmp_path: Path) -> None:
    runs = _sweep(tmp_path, {"KERAS_BACKEND": "tensorflow", "KAGGLEPIPE_CPU_DEVICES": "2"})
    _check(runs, "tensorflow", rel=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                    reason="jax is not installed (CI installs it from requirements.lock)")
def test_jax_data_parallel_two_cpu_devices(tmp_path: Path) -> None:
    runs = _sweep(tmp_path, {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    _check(runs, "jax", rel=1e-5)


def test_batch_size_must_divide_over_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """A global batch that does not split evenly stops at the config check for train, naming train.batch_size;
    the other stages (which build no model) do not care."""
    from conftest import compose

    from src import config, runtime
    from src.errors import UserError

    monkeypatch.setattr(runtime, "data_parallel_devices", lambda cfg: ["dev0", "dev1", "dev2"])
    cfg = compose("train.distribute=data_parallel", "train.batch_size=32", "train.precision=float32")
    with pytest.raises(UserError, match=r"train\.batch_size=32 does not divide over the 3 devices .*multiple of 3"):
        config.check(cfg, "train")
    for stage in ("prepare", "evaluate", "predict"):
        config.check(cfg, stage)
    cfg = compose("train.distribute=data_parallel", "train.batch_size=33", "train.precision=float32")
    config.check(cfg, "train")
    assert runtime.setup(cfg)["runtime.replicas"] == "3"
    monkeypatch.undo()
    none = compose("train.batch_size=32", "train.precision=float32")
    config.check(none, "train")  # without data parallelism any batch size does
    assert runtime.data_parallel_devices(none) == [] and runtime.setup(none)["runtime.replicas"] == "1"
