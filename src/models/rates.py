"""A lower learning rate for a backbone than for its head, as Keras optimizers (fine-tuning's phase 2).

Keras 3 has no per-variable learning rate (no param groups, no MultiOptimizer). Three ways were weighed:
- a gradient-scaling layer between backbone and head (identity forward, multiplier backward:
  y = x*m + stop_gradient(x*(1-m))) is backend-neutral, but scales the *gradient*, and Adam, AdamW and RMSprop
  divide the gradient by its own running magnitude: their step would not change at all (only SGD's would);
- one optimizer per variable group needs a custom train_step per backend;
- what is done here: each optimizer's own update_step receives the learning rate, per variable, from the base
  class on every backend (TensorFlow, also under tf.distribute; JAX's stateless apply), so a subclass multiplies
  it there by the variable's factor. Decoupled weight decay (lr x weight_decay) is scaled the same way, as in
  PyTorch's parameter groups. The factors are fixed when the optimizer is built on the model's trainable
  variables, from their paths: `full_rate` (the head's variables) keep the rate, every other variable gets
  `backbone_multiplier`. Saved with the model (registered, in its config), so a checkpoint resumes with it.
"""
from __future__ import annotations

import keras


class LayerwiseRate:
    """Mixin for a keras.optimizers class: variables outside `full_rate` learn at backbone_multiplier x its rate."""

    def __init__(self, *args, backbone_multiplier: float = 1.0, full_rate: list[str] | tuple[str, ...] = (),
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.backbone_multiplier = float(backbone_multiplier)
        self.full_rate = tuple(str(p) for p in full_rate)
        self._rate_factors: tuple[float, ...] = ()

    def build(self, variables):
        super().build(variables)
        full = set(self.full_rate)
        self._rate_factors = tuple(1.0 if v.path in full else self.backbone_multiplier for v in variables)

    def rate_factor(self, variable) -> float:
        return self._rate_factors[self._get_variable_index(variable)]

    def update_step(self, gradient, variable, learning_rate):
        factor = self.rate_factor(variable)
        return super().update_step(gradient, variable, learning_rate if factor == 1.0 else learning_rate * factor)

    def _apply_weight_decay(self, variables):
        full = [v for v in variables if self.rate_factor(v) == 1.0]
        scaled = [v for v in variables if self.rate_factor(v) != 1.0]
        super()._apply_weight_decay(full)
        if not scaled or self.weight_decay is None:
            return
        decay = self.weight_decay
        self.weight_decay = decay * self.backbone_multiplier  # read while the backend traces the decay step
        try:
            super()._apply_weight_decay(scaled)
        finally:
            self.weight_decay = decay

    def get_config(self):
        return {**super().get_config(), "backbone_multiplier": self.backbone_multiplier,
                "full_rate": list(self.full_rate)}


def _layerwise(base: type) -> type:
    """LayerwiseRate over a Keras optimizer class, registered (a checkpoint names it) as Layerwise<Name>."""
    cls = type(f"Layerwise{base.__name__}", (LayerwiseRate, base),
               {"__doc__": f"keras.optimizers.{base.__name__} with the backbone's learning-rate multiplier.",
                "__module__": __name__})
    return keras.saving.register_keras_serializable(package="kagglepipe")(cls)


LAYERWISE = {name: _layerwise(base) for name, base in (
    ("adam", keras.optimizers.Adam), ("adamw", keras.optimizers.AdamW), ("rmsprop", keras.optimizers.RMSprop),
    ("sgd", keras.optimizers.SGD))}
