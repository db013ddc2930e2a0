"""The training objective: loss, metrics, optimiser and learning-rate schedule (train.* keys)."""
from __future__ import annotations

import keras
from keras import ops
from omegaconf import DictConfig


def learning_rate(cfg: DictConfig, steps_per_epoch: int, lr: float | None = None, schedule: str | None = None,
                  epochs: int | None = None, warmup_epochs: float | None = None):
    """constant; cosine (optionally after a linear warm-up); onecycle (warm-up from lr/10 over train.warmup_epochs,
    25% of the run if 0, then cosine to 0). train.lr, train.schedule, train.epochs and train.warmup_epochs unless
    given (a fine-tuning phase gives its own)."""
    t = cfg.train
    lr = float(t.lr if lr is None else lr)
    schedule = str(t.schedule if schedule is None else schedule)
    total = max(1, int(t.epochs if epochs is None else epochs) * steps_per_epoch)
    warmup = int(float(t.warmup_epochs if warmup_epochs is None else warmup_epochs) * steps_per_epoch)
    if schedule == "constant":
        return lr
    if schedule == "onecycle":
        warmup = warmup or max(1, int(0.25 * total))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / (10.0 if warmup else 1.0), decay_steps=max(1, total - warmup), alpha=0.0,
        warmup_target=lr if warmup else None, warmup_steps=warmup)


def make_optimizer(cfg: DictConfig, steps_per_epoch: int, lr=None, layerwise: dict | None = None):
    """train.optimizer at learning rate `lr` (a number or a schedule; default learning_rate(cfg, ...)).
    layerwise={"backbone_multiplier": m, "full_rate": [variable paths]}: the variables not listed learn at m x
    that rate (src/models/rates.py)."""
    from .models.rates import LAYERWISE

    t = cfg.train
    lr = learning_rate(cfg, steps_per_epoch) if lr is None else lr
    wd = float(t.weight_decay) or None
    # train.ema_momentum: keep an exponential moving average of the weights and copy it into the model at the end of
    # every epoch (so checkpoints, validation and the saved model use it); null: plain weights
    ema = {} if t.ema_momentum is None else {
        "use_ema": True, "ema_momentum": float(t.ema_momentum), "ema_overwrite_frequency": steps_per_epoch}
    plain = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop,
             "sgd": keras.optimizers.SGD}
    cls = LAYERWISE[t.optimizer] if layerwise else plain[t.optimizer]
    extra = {"momentum": float(t.momentum), "nesterov": bool(t.nesterov)} if t.optimizer == "sgd" else {}
    return cls(lr, weight_decay=(wd or 1e-4) if t.optimizer == "adamw" else wd, **extra, **ema, **(layerwise or {}))


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


def compile_model(model, cfg: DictConfig, num_classes: int, steps_per_epoch: int, optimizer=None) -> None:
    """Cross-entropy (label smoothing as configured), and log loss + accuracy as metrics (val_log_loss picks the
    best epoch). Under MixUp/CutMix the training log_loss is the cross-entropy against the mixed labels (what the
    model is fitted to, so it never reaches 0) and accuracy is against each mix's dominant label; validation images
    are never mixed, so val_log_loss and val_accuracy are the plain ones. make_optimizer(cfg, ...) unless an
    optimizer is given (a fine-tuning phase's)."""
    ls = float(cfg.train.label_smoothing)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=ls)
        log_loss = keras.metrics.BinaryCrossentropy(name="log_loss")
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=ls)
        log_loss = keras.metrics.CategoricalCrossentropy(name="log_loss")
    jit = cfg.train.jit_compile
    model.compile(optimizer=optimizer or make_optimizer(cfg, steps_per_epoch), loss=loss,
                  metrics=[log_loss, DominantLabelAccuracy(name="accuracy")],
                  steps_per_execution=int(cfg.train.steps_per_execution),
                  jit_compile="auto" if jit in (None, "auto") else bool(jit))
