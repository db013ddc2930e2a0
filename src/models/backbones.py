"""Transfer learning: a keras.applications backbone (without its top) under the project's head.

Each backbone's own input preprocessing is a layer inside the model, so a saved model predicts from uint8 images.
model.weights: null (random), imagenet (Keras downloads and caches the file), or a local no-top weights file.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import keras

from . import ModelParams, register, weights_file
from .layers import ImageNetPreprocess, head, inputs

PREPROCESSING = {  # keras.applications name -> the input preprocessing it expects (ImageNetPreprocess modes)
    "EfficientNetB0": "none",  # rescales internally
    "ResNet50": "caffe",
}


class Backbone(ModelParams):
    backbone: Literal[tuple(PREPROCESSING)]  # type: ignore[valid-type]
    freeze_backbone: bool
    builder_loads_weights: ClassVar[bool] = True


@register("backbone", Backbone)
def backbone_model(input_shape, num_classes: int, p: Backbone, aug, seed: int) -> keras.Model:
    weights = p.weights if p.weights in (None, "imagenet") else weights_file(p.weights)
    base = getattr(keras.applications, p.backbone)(include_top=False, weights=weights, input_shape=tuple(input_shape),
                                                   pooling="avg")
    base.trainable = not p.freeze_backbone
    image, x = inputs(input_shape, aug, seed)
    x = ImageNetPreprocess(PREPROCESSING[p.backbone])(x)
    x = base(x, training=False) if p.freeze_backbone else base(x)
    return keras.Model(image, head(x, num_classes, p.dropout), name=p.name)
