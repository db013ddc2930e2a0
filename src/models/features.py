"""The frozen-feature mode's network (model.arch=features; trained by src/features.py): frozen feature extractors
side by side, their outputs joined, and a small head fitted on them by scikit-learn, exported as Keras layers.

    image (uint8) -> extract_<network> (its preprocessing + the frozen no-top network, average-pooled) -+
                  -> extract_pixels (downscaled to model.pixels, scaled to 0..1, flattened)   ----------+-> head

The head is a logistic regression (one Dense layer) or scikit-learn's MLPClassifier (Dense-ReLU layers, then
the output layer), with the feature standardisation folded into its first layer, so the saved model.keras predicts
from images as every other model does, with exactly the fitted head's numbers.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

import keras
from keras import layers
from pydantic import Field, model_validator

from ..config import NonNegative, Positive, PositiveInt
from . import ModelParams, register
from .layers import ImageNetPreprocess, head
from .scratch import Widths
from .weights import NETWORKS, network

EXTRACTORS = (*NETWORKS, "pixels")


class Features(ModelParams):
    backbones: Annotated[list[Literal[EXTRACTORS]], Field(min_length=1)]  # type: ignore[valid-type]
    pixels: PositiveInt         # the pixels extractor: images downscaled to pixels x pixels
    head: Literal["logistic", "mlp"]
    C: Union[Literal["auto"], Positive]  # logistic: inverse L2 strength (scikit-learn's C); auto: chosen by CV
    hidden: Widths              # mlp: hidden layer widths
    alpha: NonNegative          # mlp: L2 strength
    max_iter: PositiveInt
    builder_loads_weights: ClassVar[bool] = True

    def networks(self) -> list[str]:
        return [b for b in self.backbones if b != "pixels"]

    @model_validator(mode="after")
    def _consistent(self):
        from ..config import _Invalid

        if len(set(self.backbones)) != len(self.backbones):
            raise _Invalid("backbones", self.backbones, "a list of distinct extractors")
        if self.weights not in (None, "imagenet") and len(self.networks()) != 1:
            raise _Invalid("weights", self.weights, "null or imagenet, or a weights file when model.backbones holds "
                           f"exactly one network (now {len(self.networks())})")
        return self


def extractor_name(backbone: str) -> str:
    return f"extract_{backbone.lower()}"


def extractor(backbone: str, input_shape, p: Features) -> keras.Model:
    """uint8 images -> one feature vector each: a frozen Keras model."""
    image = keras.Input(shape=tuple(input_shape), name="image")
    if backbone == "pixels":
        x = layers.Rescaling(1.0 / 255)(image)
        x = layers.Flatten()(layers.Resizing(p.pixels, p.pixels, antialias=True)(x))
    else:
        x = ImageNetPreprocess(NETWORKS[backbone].preprocessing)(image)
        x = network(backbone, input_shape, p.weights)(x, training=False)
    model = keras.Model(image, x, name=extractor_name(backbone))
    model.trainable = False
    return model


def classifier(dims: int, num_classes: int, hidden: list[int]) -> keras.Model:
    """The head as Keras layers: a Dense-ReLU layer per hidden width, then the project's float32 output layer."""
    features = keras.Input(shape=(dims,), name="features")
    x = features
    for i, width in enumerate(hidden):
        x = layers.Dense(width, activation="relu", name=f"hidden_{i}")(x)
    return keras.Model(features, head(x, num_classes), name="head")


def assemble(extractors: list[keras.Model], head_model: keras.Model, name: str) -> keras.Model:
    image = keras.Input(shape=extractors[0].input_shape[1:], name="image")
    parts = [e(image) for e in extractors]
    joined = parts[0] if len(parts) == 1 else layers.Concatenate(name="joined")(parts)
    return keras.Model(image, head_model(joined), name=name)


@register("features", Features)
def features_model(input_shape, num_classes: int, p: Features, aug, seed: int) -> keras.Model:
    """The network with an unfitted head (src/features.py fits it; augmentation does not apply to frozen
    features)."""
    extractors = [extractor(b, input_shape, p) for b in p.backbones]
    dims = sum(int(e.output_shape[-1]) for e in extractors)
    return assemble(extractors, classifier(dims, num_classes, p.hidden if p.head == "mlp" else []), p.name)
