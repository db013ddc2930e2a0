"""src/optimizer.py: the metrics training reports. Under MixUp/CutMix (src/data.py mix_batch) accuracy is against
each mixed pair's dominant label, checked against an independent numpy computation on batches mix_batch made;
on hard labels it is plain accuracy (sklearn's); the metric survives a save and load."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, log_loss

from conftest import TINY, checked


def _model(num_classes: int) -> keras.Model:
    """A small fixed network whose predictions spread over both sides of every decision."""
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inp))
    units, act = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    out = keras.layers.Dense(units, activation=act, kernel_initializer=keras.initializers.RandomNormal(0, 0.3, seed=1),
                             bias_initializer="zeros")(x)
    model = keras.Model(inp, out)
    from src.optimizer import compile_model

    compile_model(model, checked("train", *TINY, "tracking.enabled=false"), num_classes, steps_per_epoch=1)
    return model


def _batch(num_classes: int, n: int = 64):
    rng = np.random.default_rng(num_classes)
    x = rng.integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(n) % num_classes
    y = labels.astype(np.float32)[:, None] if num_classes == 2 else np.eye(num_classes, dtype=np.float32)[labels]
    return x, y, labels


def _mixed(x, y, key: int, mixup: float, cutmix: float):
    from src.data import mix_batch

    mx, my = mix_batch(tf.constant(x), tf.constant(y), tf.constant(key, tf.int64), seed=5, mixup=mixup, cutmix=cutmix)
    return mx.numpy(), my.numpy()


def _reported(model, x, y) -> dict:
    return model.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0)])
def test_binary_accuracy_on_a_mixed_batch_is_against_each_pairs_dominant_label(mixup, cutmix):
    model = _model(2)
    x, y, _ = _batch(2)
    seen = []
    for key in range(4):
        mx, my = _mixed(x, y, key, mixup, cutmix)
        p = model.predict(mx, verbose=0)[:, 0]
        share = my[:, 0]  # the mix's share of class 1
        predicted = p > 0.5
        expected = np.mean(np.where(predicted, share >= 0.5, share <= 0.5))
        assert _reported(model, mx, my)["accuracy"] == pytest.approx(expected, abs=1e-6)
        soft = keras.metrics.BinaryAccuracy()
        soft.update_state(my, p[:, None])
        seen.append((expected, float(soft.result()), np.isin(share, [0.0, 1.0]).mean()))
    # the batches were mixed, and Keras' own BinaryAccuracy (what was reported before) reads lower on them: a soft
    # label equals neither 0 nor 1
    assert min(s[2] for s in seen) < 0.9
    assert all(soft <= acc + 1e-6 for acc, soft, _ in seen) and any(soft < acc - 0.1 for acc, soft, _ in seen)


def test_categorical_accuracy_on_a_cutmix_batch_is_against_the_dominant_class():
    model = _model(4)
    x, y, _ = _batch(4)
    for key in range(3):
        mx, my = _mixed(x, y, key, 0.3, 1.0)
        p = model.predict(mx, verbose=0)
        dominant = [set(np.flatnonzero(row == row.max())) for row in my]  # both classes at an exact tie
        expected = np.mean([int(np.argmax(q)) in d for q, d in zip(p, dominant)])
        assert _reported(model, mx, my)["accuracy"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")  # saved before any step
@pytest.mark.parametrize("num_classes", [2, 4])
def test_on_hard_labels_it_is_plain_accuracy_and_log_loss_is_unchanged(num_classes, tmp_path):
    model = _model(num_classes)
    x, y, labels = _batch(num_classes)
    p = model.predict(x, verbose=0)
    predicted = (p[:, 0] > 0.5).astype(int) if num_classes == 2 else p.argmax(axis=1)
    got = _reported(model, x, y)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    assert 0.2 < got["accuracy"] < 0.8  # the model is wrong on some, right on others: the check can fail
    assert got["log_loss"] == pytest.approx(log_loss(labels, p[:, 0] if num_classes == 2 else p), rel=1e-5)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)  # the metric is registered (src.optimizer): it comes back compiled
    assert _reported(again, x, y) == pytest.approx(got, abs=1e-6)
