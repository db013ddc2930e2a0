"""Two-phase fine-tuning (src/finetune.py, src/models/rates.py): what trains in each phase, batch norm kept in
inference mode, the backbone's learning-rate multiplier as it shows in the optimiser's real updates (TensorFlow and
JAX), and a run killed at the phase boundary and again in phase 2 that resumes to exactly the uninterrupted run.
MobileNet at 32x32 with a weights file the test writes (the smallest keras.applications graph)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from conftest import ROOT, TINY, checked, compose, path_overrides, write_notop_weights
from src import checkpoint, finetune, pipeline
from src.errors import UserError
from src.files import read_json
from src.models import build_model
from src.models.backbones import backbone_of
from src.models.layers import ImageNetPreprocess
from src.optimizer import compile_model, make_optimizer

FT = ["dataset.image_size=32", "train.jit_compile=false", "train.finetune.head_epochs=2", "train.epochs=4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_notop_weights(tmp_path_factory.mktemp("weights") / "mobilenet_notop.weights.h5")


def _state():
    return SimpleNamespace(phase=0, epoch=2, wait=1, phase_start=None)


def _batch(n: int = 8, size: int = 32):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (n, size, size, 3)).astype("uint8"), rng.integers(0, 2, (n, 1)).astype("float32")


def _norms(backbone):
    return [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _paths(variables) -> set[str]:
    return {v.path for v in variables}


def test_each_phase_trains_what_it_says_with_batch_norm_in_inference_mode(weights: Path):
    keras.config.set_dtype_policy("float32")
    cfg = compose("model=mobilenet", f"model.weights={weights}", *FT, "train.finetune.unfreeze=all")
    model = build_model(cfg.model, (32, 32, 3), 2, None)
    backbone, state = backbone_of(model), _state()
    head = {"logit/kernel", "logit/bias"}

    compile_model(model, cfg, 2, 3, finetune.start(model, cfg, state, 3))
    assert state.phase == 1 and _paths(model.trainable_variables) == head
    x, y = _batch()
    before = [w.copy() for w in backbone.get_weights()]
    model.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(before, backbone.get_weights()))  # moving statistics too

    compile_model(model, cfg, 2, 3, finetune.begin_phase_2(model, cfg, state, 3))
    assert (state.phase, state.phase_start, state.wait) == (2, 2, 0)
    frozen = _paths(v for bn in _norms(backbone) for v in bn.weights)
    assert _paths(model.trainable_variables) == _paths(backbone.weights) - frozen | head
    assert all(not bn.trainable for bn in _norms(backbone)) and len(_norms(backbone)) == 27
    stats = [v.numpy().copy() for bn in _norms(backbone) for v in bn.weights]
    kernels = [layer.weights[0].numpy().copy() for layer in finetune.weighted_layers(backbone)]
    model.train_on_batch(x, y)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(stats, (v for bn in _norms(backbone) for v in bn.weights)))
    assert all(not np.array_equal(k, layer.weights[0].numpy())
               for k, layer in zip(kernels, finetune.weighted_layers(backbone)))
    pre = next(layer for layer in model.layers if isinstance(layer, ImageNetPreprocess))(x)  # the backbone's input
    np.testing.assert_array_equal(np.asarray(backbone(pre, training=True)), np.asarray(backbone(pre, training=False)))


@pytest.mark.parametrize("spec, expected", [
    (5, ["conv_pw_11", "conv_dw_12", "conv_pw_12", "conv_dw_13", "conv_pw_13"]),
    ("conv_dw_13", ["conv_dw_13", "conv_pw_13"])])
def test_phase_2_unfreezes_the_top_layers_or_from_a_named_one(weights: Path, spec, expected):
    cfg = compose("model=mobilenet", f"model.weights={weights}", *FT, f"train.finetune.unfreeze={spec}")
    model = build_model(cfg.model, (32, 32, 3), 2, None)
    finetune.start(model, cfg, _state(), 3)
    finetune.begin_phase_2(model, cfg, _state(), 3)
    trained = [layer.name for layer in backbone_of(model).layers if layer.trainable and layer.weights]
    assert trained == expected  # batch norms (conv_dw_13_bn, ...) stay frozen
    assert _paths(model.trainable_variables) == {f"{n}/kernel" for n in expected} | {"logit/kernel", "logit/bias"}


@pytest.mark.parametrize("spec, words", [("nope", "no layer of mobilenet"), (500, "has 27 layers with weights")])
def test_an_unfreeze_that_fits_no_layer_is_one_line_before_phase_1(weights: Path, spec, words):
    cfg = compose("model=mobilenet", *FT, f"train.finetune.unfreeze={spec}")
    model = build_model(cfg.model, (32, 32, 3), 2, None)
    with pytest.raises(UserError) as e:
        finetune.start(model, cfg, _state(), 3)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, words", [
    ("model=seed_cnn", "unless the model is a keras.applications backbone"),
    ("train.finetune.head_epochs=4", "fewer than train.epochs=4")])
def test_fine_tuning_config_mistakes_are_one_line(tmp_path: Path, override: str, words: str):
    with pytest.raises(UserError) as e:
        checked("train", *TINY, *path_overrides(tmp_path), "model=mobilenet", *FT, override)
    assert str(e.value).startswith("config error: train.finetune.head_epochs=") and words in str(e.value)


# ------------------------------------------------------------------ the learning-rate multiplier, on real updates
def _tiny_backbone_model():
    """A nested 'backbone' (conv, batch norm, conv, pooling) under the project's head: quick on every backend."""
    from src.models.layers import head

    inner = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, name="c1")(inner)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn1")(y))
    y = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="c2")(y))
    backbone = keras.Model(inner, y, name="tinynet")
    image = keras.Input((8, 8, 3))
    return keras.Model(image, head(backbone(image, training=False), 2))


def multiplier_updates(optimizer: str, multiplier: float = 0.05) -> dict[str, float]:
    """One step of two identical models on one batch: phase 2's optimiser vs the plain one at the same rate. Returns
    the largest deviation of the backbone's updates from multiplier x the plain ones, and of the head's from the
    plain ones (relative to the update sizes)."""
    keras.utils.set_random_seed(0)
    cfg = compose("model=mobilenet", *FT, f"train.optimizer={optimizer}", "train.lr=0.1", "train.weight_decay=0.1",
                  f"train.finetune.backbone_lr_multiplier={multiplier}", "train.schedule=constant")
    a, b = _tiny_backbone_model(), _tiny_backbone_model()
    b.set_weights(a.get_weights())
    finetune.start(a, cfg, _state(), 1)
    compile_model(a, cfg, 2, 1, finetune.begin_phase_2(a, cfg, _state(), 1))
    b.get_layer("tinynet").get_layer("bn1").trainable = False  # as phase 2 leaves it in a
    compile_model(b, cfg, 2, 1, make_optimizer(cfg, 1))
    assert type(a.optimizer).__name__.startswith("Layerwise")
    assert float(a.optimizer.learning_rate) == float(b.optimizer.learning_rate) == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (16, 8, 8, 3)).astype("float32"), rng.integers(0, 2, (16, 1)).astype("float32")
    start = {v.path: v.numpy().copy() for v in a.trainable_variables}
    a.train_on_batch(x, y)
    b.train_on_batch(x, y)
    moved_a = {v.path: v.numpy() - start[v.path] for v in a.trainable_variables}
    moved_b = {v.path: v.numpy() - start[v.path] for v in b.trainable_variables}
    out = {}
    for group, factor in (("backbone", multiplier), ("head", 1.0)):
        paths = [p for p in moved_a if p.startswith("logit") == (group == "head")]
        size = max(float(np.abs(moved_b[p]).max()) for p in paths)
        assert size > 0
        out[group] = max(float(np.abs(moved_a[p] - factor * moved_b[p]).max()) for p in paths) / (factor * size)
    out["vars"] = len(moved_a)
    return out


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_backbone_learning_rate_multiplier_scales_the_real_updates(optimizer: str):
    """Adam's step does not scale with its gradient, so this would fail for a gradient-scaling layer; it holds
    here for every optimiser, weight decay included."""
    got = multiplier_updates(optimizer)
    assert got["vars"] == 6 and got["backbone"] < 1e-3 and got["head"] < 1e-3, got


def test_backbone_learning_rate_multiplier_on_jax():
    code = ("import sys, json; sys.path.insert(0, 'tests'); from test_finetune import multiplier_updates; "
            "print(json.dumps([multiplier_updates('adam')]))")
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    for got in json.loads(r.stdout.strip().splitlines()[-1]):
        assert got["backbone"] < 1e-3 and got["head"] < 1e-3, got


# ------------------------------------------------------------------ killed at the boundary, then in phase 2
def _overrides(base: Path, weights: Path, name: str) -> list[str]:
    return [*TINY, *path_overrides(base), "model=mobilenet", f"model.weights={weights}", *FT, f"name={name}",
            "train.finetune.head_lr=0.01", "train.lr=0.01", "train.early_stopping_patience=0", "augment=none",
            "train.batch_size=8"]


def _stopped_after(monkeypatch, epochs: int, cfg) -> None:
    """Train until `epochs` epochs are checkpointed, then stop as a kill would (nothing after the checkpoint)."""
    real_end = checkpoint.EpochEnd.on_epoch_end

    def stop(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if self.state.epoch == epochs:
            raise KeyboardInterrupt(f"killed after epoch {epochs}")
    monkeypatch.setattr(checkpoint.EpochEnd, "on_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(cfg, "train")
    monkeypatch.setattr(checkpoint.EpochEnd, "on_epoch_end", real_end)


def test_run_killed_at_the_phase_boundary_and_in_phase_2_resumes_exactly(tmp_path: Path, weights: Path, monkeypatch,
                                                                         capsys):
    """The uninterrupted run against one stopped right after phase 1's last checkpoint (before phase 2 starts),
    resumed and stopped again once phase 2's first epoch is checkpointed, then resumed to the end: the same history,
    phases and weights, one MLflow run that ends FINISHED. (Stopped in process: everything a resumed run knows comes
    from the checkpoint files; SIGKILLs mid-epoch are tested on one-phase runs in tests/test_train.py.)"""
    plain = pipeline.run(checked("train", *_overrides(tmp_path, weights, "plain")), "train")
    history = read_json(tmp_path / "models" / "demo" / "plain" / "history.json")
    assert [h["phase"] for h in history] == [1, 1, 2, 2]
    assert len({round(h["val_log_loss"], 6) for h in history}) > 1, "nothing trained: the comparison would be empty"

    cfg = checked("train", *_overrides(tmp_path, weights, "killed"))
    ckpt = tmp_path / "models" / "demo" / "killed" / "checkpoint"
    _stopped_after(monkeypatch, 2, cfg)
    assert (read_json(ckpt / "state.json")["epoch"], read_json(ckpt / "state.json")["phase"]) == (2, 1)
    capsys.readouterr()
    _stopped_after(monkeypatch, 3, cfg)
    log = capsys.readouterr().out
    assert "resuming after epoch 2" in log and "train: phase 2 (fine-tune) from epoch 3" in log, log
    assert (read_json(ckpt / "state.json")["epoch"], read_json(ckpt / "state.json")["phase"]) == (3, 2)

    killed = pipeline.run(cfg, "train")
    assert "resuming after epoch 3" in capsys.readouterr().out
    resumed = read_json(tmp_path / "models" / "demo" / "killed" / "history.json")
    assert [h["phase"] for h in resumed] == [1, 1, 2, 2]
    for key in ("loss", "val_log_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in resumed], [h[key] for h in history], rtol=1e-5, err_msg=key)
    assert killed["best_epoch"] == plain["best_epoch"]
    a = keras.saving.load_model(tmp_path / "models" / "demo" / "plain" / "model.keras")
    b = keras.saving.load_model(tmp_path / "models" / "demo" / "killed" / "model.keras")
    for w, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-6)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(killed["run_id"])
    assert run.info.status == "FINISHED"
    logged = {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "phase")}
    assert logged == {(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)}
