"""Networks trained from scratch: the course's MLP and seed CNN, small Xceptions, ResNets, and airbench94's network."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import keras
from keras import layers
from pydantic import Field, model_validator

from ..config import Fraction, PositiveInt, Positive
from ..errors import UserError
from . import ModelParams, register
from .layers import PartialDirac, PatchWhitening, conv_bn, head, inputs

Widths = Annotated[list[PositiveInt], Field(min_length=1)]


class SeedCNN(ModelParams):
    pass


@register("seed_cnn", SeedCNN)
def seed_cnn(input_shape, num_classes: int, p: SeedCNN, aug, seed: int) -> keras.Model:
    """The course's network: Conv 32-64-128-128 with 2x2 max-pooling, Dense 512."""
    size = int(input_shape[0])
    for _ in range(4):
        size = (size - 2) // 2
    if size < 1:
        raise UserError(f"model=seed_cnn needs images of at least 46x46 (dataset.image_size={input_shape[0]}); "
                        "use a larger dataset.image_size or model=resnet_cifar")
    image, x = inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    for filters in (32, 64, 128, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    if p.dropout:
        x = layers.Dropout(p.dropout)(x)
    x = layers.Dense(512, activation="relu")(x)
    return keras.Model(image, head(x, num_classes), name=p.name)


class MLP(ModelParams):
    hidden: Widths                        # Dense (ReLU) widths
    input_size: Optional[PositiveInt]     # images downscaled to input_size x input_size first; null: as prepared


@register("mlp", MLP)
def mlp(input_shape, num_classes: int, p: MLP, aug, seed: int) -> keras.Model:
    """The course's first network: flattened pixels -> Dense 50 -> Dense 50 (ReLU) -> the head; what a CNN buys is
    measured against it."""
    image, x = inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    if p.input_size:
        x = layers.Resizing(p.input_size, p.input_size, antialias=True)(x)
    x = layers.Flatten()(x)
    for width in p.hidden:
        x = layers.Dense(width, activation="relu")(x)
    return keras.Model(image, head(x, num_classes, p.dropout), name=p.name)


class XceptionSmall(ModelParams):
    stem_width: PositiveInt
    widths: Widths             # one residual block of separable convs per width
    head_width: PositiveInt    # the separable conv before global pooling


@register("xception_small", XceptionSmall)
def xception_small(input_shape, num_classes: int, p: XceptionSmall, aug, seed: int) -> keras.Model:
    """keras.io's "image classification from scratch" network: a stride-2 stem, residual blocks of separable
    convs with batch norm, a wide final separable conv, global pooling."""
    image, x = inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = conv_bn(x, p.stem_width, 3, strides=2)
    previous = x
    for width in p.widths:
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, layers.Conv2D(width, 1, strides=2, padding="same")(previous)])
        previous = x
    x = layers.SeparableConv2D(p.head_width, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, head(x, num_classes, p.dropout), name=p.name)


class XceptionMini(ModelParams):
    stem_width: PositiveInt
    stem_kernel: Annotated[int, Field(ge=1, le=11)]
    stem_strides: Literal[1, 2]
    widths: Widths
    bn_momentum: Fraction


@register("xception_mini", XceptionMini)
def xception_mini(input_shape, num_classes: int, p: XceptionMini, aug, seed: int) -> keras.Model:
    """The small Xception-like network of "Deep Learning with Python" (2nd ed., ch. 9) for photo data sets of a few
    thousand images: a plain stem conv, then pre-activation blocks (BN, ReLU, separable conv, twice) that halve
    the resolution by max-pooling, with 1x1 strided residual projections; global pooling, dropout, the head.
    The book reports 90.8% test accuracy on 2,000 Dogs vs Cats photos (180x180, stem stride 1).
    `stem_strides: 2` quarters the cost of the first block (~2x faster on a CPU at 150x150)."""
    image, x = inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = layers.Conv2D(p.stem_width, p.stem_kernel, strides=p.stem_strides, use_bias=False)(x)
    for width in p.widths:
        residual = x
        for _ in range(2):
            x = layers.BatchNormalization(momentum=p.bn_momentum)(x)
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(width, 1, strides=2, padding="same", use_bias=False)(residual)
        x = layers.add([x, residual])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, head(x, num_classes, p.dropout), name=p.name)


class ResNetCifar(ModelParams):
    widths: Annotated[list[PositiveInt], Field(min_length=4, max_length=4)]  # prep, stage 1, 2, 3
    logit_scale: Positive


@register("resnet_cifar", ResNetCifar)
def resnet_cifar(input_shape, num_classes: int, p: ResNetCifar, aug, seed: int) -> keras.Model:
    """ResNet-9 (the DAWNBench CIFAR-10 network): prep conv, three stages with pooling, two residual blocks.

    For inputs larger than 32x32 extra stride-2 convs bring the image down to ~32 pixels first, so it also
    serves Dogs vs Cats."""
    w = p.widths
    image, x = inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = conv_bn(x, w[0])
    size = int(input_shape[0])
    while size > 40:
        x = conv_bn(x, w[0], strides=2)
        size = (size + 1) // 2

    def residual(x, width):
        return layers.add([x, conv_bn(conv_bn(x, width), width)])

    x = conv_bn(x, w[1])
    x = residual(layers.MaxPooling2D(2)(x), w[1])
    x = layers.MaxPooling2D(2)(conv_bn(x, w[2]))
    x = layers.MaxPooling2D(2)(conv_bn(x, w[3]))
    x = layers.GlobalMaxPooling2D()(residual(x, w[3]))
    out = head(x, num_classes, p.dropout, p.logit_scale, use_bias=False)
    return keras.Model(image, out, name=p.name)


class ResNetSmall(ModelParams):
    stem_width: PositiveInt
    widths: Widths             # one stage per width; each stage after the first halves the resolution
    blocks: Widths             # residual blocks per stage

    @model_validator(mode="after")
    def _one_block_count_per_stage(self):
        if len(self.widths) != len(self.blocks):
            from ..config import _Invalid

            raise _Invalid("blocks", self.blocks, f"one block count per stage: {len(self.widths)} values, as many as "
                                                  f"model.widths (now {len(self.blocks)})")
        return self


@register("resnet_small", ResNetSmall)
def resnet_small(input_shape, num_classes: int, p: ResNetSmall, aug, seed: int) -> keras.Model:
    """A compact ResNet (basic blocks, He et al. 2016) for photos: a stride-2 stem conv and max-pooling, then
    stages of residual blocks, each stage after the first halving the resolution and widening the channels.

    Cheap enough to train from scratch on a CPU (~110 img/s at 150x150 on 2 cores with widths 32-256, one block
    a stage, against ~6 img/s for xception_small), deep enough for small photo data sets (Dogs vs Cats)."""
    def block(x, width: int, strides: int):
        y = conv_bn(x, width, 3, strides)
        y = layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, gamma_initializer="zeros")(y)  # starts as identity
        if strides != 1 or x.shape[-1] != width:
            x = layers.Conv2D(width, 1, strides=strides, use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        return layers.Activation("relu")(layers.add([x, y]))

    image, x = inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = layers.MaxPooling2D(2)(conv_bn(x, p.stem_width, 3, strides=2))
    for stage, (width, n) in enumerate(zip(p.widths, p.blocks)):
        for j in range(n):
            x = block(x, width, 2 if (j == 0 and stage > 0) else 1)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, head(x, num_classes, p.dropout), name=p.name)


class Airbench(ModelParams):
    widths: Widths
    bn_momentum: Fraction      # Keras convention (PyTorch's momentum 0.6 is Keras' 0.4)
    logit_scale: Positive


@register("airbench", Airbench)
def airbench(input_shape, num_classes: int, p: Airbench, aug, seed: int) -> keras.Model:
    """The network of airbench94 (Keller Jordan's fastest CIFAR-10 recipe), in Keras: a frozen 2x2 patch-whitening
    conv (fitted on training images), GELU, three conv groups (conv, max-pool, BN, GELU, conv, BN, GELU), a final
    max-pool, and a bias-free linear head whose logits are scaled by 1/9. Batch norms learn no scale (bias only),
    use momentum 0.4 (PyTorch's 0.6) and compute in float32; convs start partly as identities (PartialDirac)."""
    image, x = inputs(input_shape, aug, seed)
    x = layers.Activation("gelu")(PatchWhitening(name="whiten")(x))

    def bn(x):
        return layers.BatchNormalization(momentum=p.bn_momentum, epsilon=1e-12, scale=False)(x)

    for i, width in enumerate(p.widths):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac(seed + 10 * i))(x)
        x = layers.Activation("gelu")(bn(layers.MaxPooling2D(2)(x)))
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac(seed + 10 * i + 1))(x)
        x = layers.Activation("gelu")(bn(x))
    x = layers.GlobalMaxPooling2D()(x)  # airbench: MaxPool2d(3) on the final 3x3 map
    out = head(x, num_classes, p.dropout, p.logit_scale, use_bias=False)
    return keras.Model(image, out, name=p.name)
