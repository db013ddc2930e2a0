"""The training objective: loss, metrics, optimiser and learning-rate schedule (train.* keys)."""
from __future__ import annotations

from omegaconf import DictConfig


def learning_rate(cfg: DictConfig, steps_per_epoch: int, lr: float | None = None, schedule: str | None = None,
                  epochs: int | None = None, warmup_epochs: float | None = None):
    """constant; cosine (optionally after a linear warm-up); onecycle (warm-up from lr/10 over train.warmup_epochs,
    25% of the run if 0, then cosine to 0). train.lr, train.schedule, train.epochs and train.warmup_epochs unless
    given (a fine-tuning phase gives its own)."""
    import keras

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
    import keras

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


def compile_model(model, cfg: DictConfig, num_classes: int, steps_per_epoch: int, optimizer=None) -> None:
    """Cross-entropy (label smoothing as configured), and log loss + accuracy as metrics (val_log_loss picks the
    best epoch); make_optimizer(cfg, ...) unless an optimizer is given (a fine-tuning phase's)."""
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
    model.compile(optimizer=optimizer or make_optimizer(cfg, steps_per_epoch), loss=loss, metrics=metrics,
                  steps_per_execution=int(cfg.train.steps_per_execution),
                  jit_compile="auto" if jit in (None, "auto") else bool(jit))
