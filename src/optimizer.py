"""The training objective: loss, metrics, optimiser and learning-rate schedule (train.* keys)."""
from __future__ import annotations

from omegaconf import DictConfig


def learning_rate(cfg: DictConfig, steps_per_epoch: int):
    """constant; cosine (optionally after a linear warm-up); onecycle (warm-up from lr/10 over train.warmup_epochs,
    25% of the run if 0, then cosine to 0)."""
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
    ema = {} if t.ema_momentum is None else {
        "use_ema": True, "ema_momentum": float(t.ema_momentum), "ema_overwrite_frequency": steps_per_epoch}
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd, **ema)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 1e-4, **ema)
    if t.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=wd, **ema)
    return keras.optimizers.SGD(lr, momentum=float(t.momentum), nesterov=bool(t.nesterov), weight_decay=wd, **ema)


def compile_model(model, cfg: DictConfig, num_classes: int, steps_per_epoch: int) -> None:
    """Cross-entropy (label smoothing as configured), and log loss + accuracy as metrics (val_log_loss picks the
    best epoch)."""
    import keras

    ls = float(cfg.train.label_smoothing)
    if num_classes == 2:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=ls)
        metrics = [keras.metrics.BinaryCrossentropy(name="log_loss"), keras.metrics.BinaryAccuracy(name="accuracy")]
    else:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=ls)
        metrics = [keras.metrics.CategoricalCrossentropy(name="log_loss"),
                   keras.metrics.CategoricalAccuracy(name="accuracy")]
    jit = cfg.train.jit_compile
    model.compile(optimizer=make_optimizer(cfg, steps_per_epoch), loss=loss, metrics=metrics,
                  steps_per_execution=int(cfg.train.steps_per_execution),
                  jit_compile="auto" if jit in (None, "auto") else bool(jit))
