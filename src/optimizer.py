"""The training objective: loss, metrics, optimiser and learning-rate schedule (train.* keys)."""
from __future__ import annotations

import keras
from keras import ops
from omegaconf import DictConfig


def learning_rate(cfg: DictConfig, steps_per_epoch: int):
    """constant; cosine (optionally after a linear warm-up); onecycle (warm-up from lr/10 over train.warmup_epochs,
    25% of the run if 0, then cosine to 0)."""
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
    t = cfg.train
    lr = learning_rate(cfg, steps_per_epoch)
    wd = float(t.weight_decay) or None
    # train.ema_momentum: keep an exponential moving average of the weights and copy it into the model at the end of
    # every epoch (so checkpoints, validation and the saved model use it); null: plain weights
    ema = {} if t.ema_momentum is None else {
        "use_ema": True, "ema_momentum": float(t.ema_momentum), "ema_overwrite_frequency": steps_per_epoch}
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd, **ema)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 1e-4, **ema)
    if t.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd, **ema)
    return keras.optimizers.SGD(lr, momentum=float(t.momentum), nesterov=bool(t.nesterov), weight_decay=wd, **ema)


def dominant_label_hits(y_true, y_pred):
    """1 where the predicted class is the label's largest share, else 0. With hard labels this is plain accuracy;
    with a mixed label (MixUp/CutMix: lam of one image's class, 1 - lam of another's) the prediction counts as
    right when it names the class that holds most of the mix (either one at an exact tie). Keras' own
    Binary/CategoricalAccuracy compare against the soft label itself: BinaryAccuracy counts a 0.7/0.3 label as
    matching neither prediction, which reads as ~0.3 accuracy on two classes."""
    y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
    if y_pred.shape[-1] == 1:  # two classes: P(class 1)
        hit = ops.where(y_pred > 0.5, y_true >= 0.5, y_true <= 0.5)[..., 0]
    else:
        share = ops.take_along_axis(y_true, ops.expand_dims(ops.argmax(y_pred, axis=-1), -1), axis=-1)[..., 0]
        hit = share >= ops.max(y_true, axis=-1)
    return ops.cast(hit, "float32")


@keras.saving.register_keras_serializable("kagglepipe")
class DominantLabelAccuracy(keras.metrics.MeanMetricWrapper):
    """Accuracy against each image's dominant label (dominant_label_hits): the training accuracy under
    MixUp/CutMix; on validation's hard labels it equals Keras' Binary/CategoricalAccuracy."""

    def __init__(self, name: str = "accuracy", dtype=None):
        super().__init__(dominant_label_hits, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def compile_model(model, cfg: DictConfig, num_classes: int, steps_per_epoch: int) -> None:
    """Cross-entropy (label smoothing as configured), and log loss + accuracy as metrics (val_log_loss picks the
    best epoch). Under MixUp/CutMix the training log_loss is the cross-entropy against the mixed labels (what the
    model is fitted to, so it never reaches 0) and accuracy is against each mix's dominant label; validation images
    are never mixed, so val_log_loss and val_accuracy are the plain ones."""
    ls = float(cfg.train.label_smoothing)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=ls)
        log_loss = keras.metrics.BinaryCrossentropy(name="log_loss")
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=ls)
        log_loss = keras.metrics.CategoricalCrossentropy(name="log_loss")
    jit = cfg.train.jit_compile
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss,
                  metrics=[log_loss, DominantLabelAccuracy(name="accuracy")],
                  steps_per_execution=int(cfg.train.steps_per_execution),
                  jit_compile="auto" if jit in (None, "auto") else bool(jit))
