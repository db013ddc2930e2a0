"""Transfer learning: a keras.applications backbone (without its top) under the project's head.

Each backbone's own input preprocessing is a layer inside the model, so a saved model predicts from uint8 images
(src/models/weights.py: which preprocessing each network expects, its smallest input, where its weights come from).
model.weights: null (random), imagenet (Keras downloads and caches the file), or a local no-top weights file.
model.freeze_backbone: true trains the head only (the backbone frozen, its batch norm in inference mode); false
trains everything at train.lr. Two phases, head first then the backbone at a lower rate: train.finetune.*
(src/finetune.py).
"""
from __future__ import annotations

from typing import ClassVar, Literal

import keras

from . import ModelParams, register
from .layers import ImageNetPreprocess, head, inputs
from .weights import NETWORKS, network


class Backbone(ModelParams):
    backbone: Literal[tuple(NETWORKS)]  # type: ignore[valid-type]
    freeze_backbone: bool
    builder_loads_weights: ClassVar[bool] = True

    def networks(self) -> list[str]:
        return [self.backbone]


@register("backbone", Backbone)
def backbone_model(input_shape, num_classes: int, p: Backbone, aug, seed: int) -> keras.Model:
    base = network(p.backbone, input_shape, p.weights)
    base.trainable = not p.freeze_backbone
    image, x = inputs(input_shape, aug, seed)
    x = ImageNetPreprocess(NETWORKS[p.backbone].preprocessing)(x)
    x = base(x, training=False) if p.freeze_backbone else base(x)
    return keras.Model(image, head(x, num_classes, p.dropout), name=p.name)


def backbone_of(model: keras.Model) -> keras.Model:
    """The keras.applications network inside a backbone model (its one nested model)."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"{model.name} holds {len(nested)} nested networks, not one backbone")
    return nested[0]
