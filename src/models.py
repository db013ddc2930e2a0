"""Keras 3 model builders, chosen by name (config group `model`). Backend-neutral: keras.layers and keras.ops only.

Every model takes uint8 (or 0..255 float) images, augments them in training (Keras preprocessing layers,
so augmentation runs on the accelerator), and ends in a float32 head whatever the precision policy:
a sigmoid unit giving P(class 1) for two classes, a softmax over the classes otherwise.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops
from omegaconf import DictConfig


# ------------------------------------------------------------------ small building blocks
@keras.saving.register_keras_serializable(package="kagglepipe")
class ImageNetPreprocess(layers.Layer):
    """keras.applications preprocessing as a layer (0..255 RGB in): 'caffe' (BGR, mean-subtracted), 'torch', 'tf' or 'none'."""

    def __init__(self, mode: str = "none", **kwargs: Any):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=self.compute_dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor([0.485, 0.456, 0.406], dtype=self.compute_dtype)
            std = ops.convert_to_tensor([0.229, 0.224, 0.225], dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="kagglepipe")
class RandomFlipZoomShift(layers.Layer):
    """Per-image random horizontal flip, zoom and translation (reflect padding), in training only.

    The warp is separable, so it is two small batched matrix products (rows, then columns) with bilinear
    weights: fast on accelerators under every backend (Keras' RandomZoom/RandomTranslation gather per pixel
    and crawl under JAX on a GPU). Without zoom the shifts are whole pixels: exact pad-reflect-and-crop.
    """

    def __init__(self, flip: bool = False, zoom: float = 0.0, translate: float = 0.0, seed: int | None = None,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.flip, self.zoom, self.translate, self.seed = bool(flip), float(zoom), float(translate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _weights(self, n: int, scale, shift):
        """(B, n_out, n_in) bilinear sampling matrices: output pixel i reads input coordinate c_i (reflected)."""
        i = ops.arange(n, dtype="float32")
        c = (i[None, :] + 0.5 - n / 2) * scale[:, None] + n / 2 - 0.5 + shift[:, None]
        period = 2.0 * (n - 1)
        c = ops.mod(c, period)
        c = ops.where(c > n - 1, period - c, c)
        return ops.relu(1.0 - ops.abs(c[:, :, None] - i[None, None, :]))

    def call(self, x, training=None):
        x = ops.cast(x, self.compute_dtype)
        if not training:
            return x
        b = ops.shape(x)[0]
        h, w = int(x.shape[1]), int(x.shape[2])
        u = keras.random.uniform((4, b), seed=self.seed_generator)
        scale = 1.0 + self.zoom * (2.0 * u[0] - 1.0)
        ty, tx = self.translate * h * (2.0 * u[1] - 1.0), self.translate * w * (2.0 * u[2] - 1.0)
        if not self.zoom:
            ty, tx = ops.round(ty), ops.round(tx)
        sx = scale * ops.where(u[3] < 0.5, -1.0, 1.0) if self.flip else scale
        ay = ops.cast(self._weights(h, scale, ty), self.compute_dtype)
        ax = ops.cast(self._weights(w, sx, tx), self.compute_dtype)
        x = ops.einsum("bij,bjwc->biwc", ay, x)
        return ops.einsum("bkw,biwc->bikc", ax, x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "zoom": self.zoom, "translate": self.translate,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="kagglepipe")
class PatchWhitening(layers.Layer):
    """airbench's first layer: a frozen 2x2 convolution whose filters whiten 2x2 image patches.

    Fitted once on training images (fit_to_data): the images are scaled to 0..1 and normalised per channel,
    then the k = 2*2*channels eigenvectors of the patch covariance, each divided by sqrt(eigenvalue + eps), and
    their negatives make 2k filters. Only the bias trains. Takes 0..255 images; 'valid' padding (32 -> 31)."""

    def __init__(self, eps: float = 5e-4, **kwargs: Any):
        super().__init__(**kwargs)
        self.eps = float(eps)

    def build(self, input_shape):
        c = int(input_shape[-1])
        k = 4 * c
        self.mean = self.add_weight(shape=(c,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(c,), initializer="ones", trainable=False, name="std")
        self.kernel = self.add_weight(shape=(2, 2, c, 2 * k), initializer="glorot_uniform", trainable=False,
                                      name="kernel")
        self.bias = self.add_weight(shape=(2 * k,), initializer="zeros", trainable=True, name="bias")

    def fit_to_data(self, images) -> None:
        """images: uint8 (N, H, W, C), a few thousand training images."""
        import numpy as np

        images = np.asarray(images)
        n, h, w, c = images.shape
        scaled = images.astype(np.float32) / 255.0
        mean = scaled.mean(axis=(0, 1, 2), dtype=np.float64)
        std = scaled.std(axis=(0, 1, 2), dtype=np.float64) + 1e-8
        del scaled
        cov = np.zeros((4 * c, 4 * c))
        for s in range(0, n, 256):  # in chunks: all patches of 5,000 images at once would take ~0.5 GB
            x = (images[s:s + 256].astype(np.float64) / 255.0 - mean) / std
            patches = np.stack([x[:, i:h - 1 + i, j:w - 1 + j, :] for i in (0, 1) for j in (0, 1)], axis=3)
            flat = patches.reshape(-1, 4 * c)  # (i, j) major, channel minor: kernel[i, j, c] below
            cov += flat.T @ flat
        cov /= n * (h - 1) * (w - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        filters = eigenvectors.T / np.sqrt(eigenvalues + self.eps)[:, None]    # (k, 4c): one filter a row
        kernel = np.concatenate([filters, -filters]).reshape(2 * 4 * c, 2, 2, c).transpose(1, 2, 3, 0)
        self.mean.assign(mean.astype("float32"))
        self.std.assign(std.astype("float32"))
        self.kernel.assign(kernel.astype("float32"))

    def call(self, x):
        x = (ops.cast(x, self.compute_dtype) / 255.0 - self.mean) / self.std  # weights are cast to compute_dtype
        return ops.conv(x, self.kernel, strides=1, padding="valid") + self.bias

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, None if h is None else h - 1, None if w is None else w - 1, 8 * int(c))

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="kagglepipe")
class PartialDirac(keras.initializers.Initializer):
    """Conv kernel initialiser (airbench): Keras' default (Glorot uniform), with the first min(in, out) filters
    replaced by identities (a single 1 at the centre tap of their own input channel)."""

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        import numpy as np

        kh, kw, cin, cout = shape
        w = np.array(keras.initializers.GlorotUniform(seed=self.seed)(shape, dtype="float32"))
        n = min(cin, cout)
        w[:, :, :, :n] = 0.0
        w[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        return ops.convert_to_tensor(w, dtype=dtype or "float32")

    def get_config(self):
        return {"seed": self.seed}


def data_fitted_layers(model: keras.Model) -> list[layers.Layer]:
    """The layers whose weights are computed from training images (PatchWhitening): fit_to_data(images) on a
    new model before training, never on a resumed one."""
    return [layer for layer in model._flatten_layers() if layer is not model and hasattr(layer, "fit_to_data")]


def augmentation(aug: DictConfig | None, seed: int) -> list[layers.Layer]:
    """Random augmentation layers (identity at inference)."""
    if aug is None:
        return []
    out: list[layers.Layer] = []
    fill = str(aug.get("fill_mode", "reflect"))
    if aug.rotation:
        out.append(layers.RandomRotation(float(aug.rotation), fill_mode=fill, seed=seed + 1))
    if aug.flip or aug.zoom or aug.translate:
        out.append(RandomFlipZoomShift(bool(aug.flip), float(aug.zoom), float(aug.translate), seed=seed))
    if aug.get("contrast"):
        out.append(layers.RandomContrast(float(aug.contrast), value_range=(0, 255), seed=seed + 4))
    return out


def head(x, num_classes: int, dropout: float = 0.0, logit_scale: float = 1.0, use_bias: bool = True):
    """Float32 output layer: P(class 1) for two classes, softmax otherwise (logits optionally scaled)."""
    if dropout:
        x = layers.Dropout(dropout)(x)
    if num_classes == 2:
        x = layers.Dense(1, dtype="float32", use_bias=use_bias, name="logit")(x)
        if logit_scale != 1.0:
            x = layers.Rescaling(logit_scale, dtype="float32", name="logit_scale")(x)
        return layers.Activation("sigmoid", dtype="float32", name="probability")(x)
    x = layers.Dense(num_classes, dtype="float32", use_bias=use_bias, name="logits")(x)
    if logit_scale != 1.0:
        x = layers.Rescaling(logit_scale, dtype="float32", name="logit_scale")(x)
    return layers.Activation("softmax", dtype="float32", name="probabilities")(x)


def conv_bn(x, filters: int, kernel: int = 3, strides: int = 1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    return layers.Activation("relu")(x)


def _inputs(input_shape, aug: DictConfig | None, seed: int):
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for layer in augmentation(aug, seed):
        x = layer(x)
    return inputs, x


# ------------------------------------------------------------------ the networks
def seed_cnn(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """The course's network: Conv 32-64-128-128 with 2x2 max-pooling, Dense 512."""
    size = int(input_shape[0])
    for _ in range(4):
        size = (size - 2) // 2
    if size < 1:
        from .common import UserError

        raise UserError(f"model=seed_cnn needs images of at least 46x46 (dataset.image_size={input_shape[0]}); "
                        "use a larger dataset.image_size or model=resnet_cifar")
    inputs, x = _inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    for filters in (32, 64, 128, 128):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    if cfg.dropout:
        x = layers.Dropout(float(cfg.dropout))(x)
    x = layers.Dense(512, activation="relu")(x)
    return keras.Model(inputs, head(x, num_classes), name="seed_cnn")


def xception_small(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """keras.io's "image classification from scratch" network: separable convs, batch norm, residuals."""
    inputs, x = _inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = conv_bn(x, int(cfg.stem_width), 3, strides=2)
    previous = x
    for width in cfg.widths[1:]:
        width = int(width)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(width, 1, strides=2, padding="same")(previous)
        x = layers.add([x, residual])
        previous = x
    x = layers.SeparableConv2D(int(cfg.widths[-1]) + 296, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x, num_classes, float(cfg.dropout)), name="xception_small")


def xception_mini(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """The small Xception-like network of "Deep Learning with Python" (2nd ed., ch. 9) for photo data sets of a few
    thousand images: a plain stem conv, then pre-activation blocks (BN, ReLU, separable conv, twice) that halve
    the resolution by max-pooling, with 1x1 strided residual projections; global pooling, dropout, the head.
    The book reports 90.8% test accuracy on 2,000 Dogs vs Cats photos (180x180, stem stride 1).
    `stem_strides: 2` quarters the cost of the first block (~2x faster on a CPU at 150x150)."""
    inputs, x = _inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = layers.Conv2D(int(cfg.stem_width), int(cfg.stem_kernel), strides=int(cfg.stem_strides), use_bias=False)(x)
    for width in cfg.widths:
        width = int(width)
        residual = x
        for _ in range(2):
            x = layers.BatchNormalization(momentum=float(cfg.get("bn_momentum", 0.99)))(x)
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        residual = layers.Conv2D(width, 1, strides=2, padding="same", use_bias=False)(residual)
        x = layers.add([x, residual])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x, num_classes, float(cfg.dropout)), name="xception_mini")


def resnet_cifar(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """ResNet-9 (the DAWNBench CIFAR-10 network): prep conv, three stages with pooling, two residual blocks.

    For inputs larger than 32x32 extra stride-2 pooling keeps the cost in check, so it also serves Dogs vs Cats.
    """
    w = [int(v) for v in cfg.widths]
    inputs, x = _inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = conv_bn(x, w[0])
    size = int(input_shape[0])
    while size > 40:  # bring large images down to ~32 pixels before the CIFAR-sized body
        x = conv_bn(x, w[0], strides=2)
        size = (size + 1) // 2

    def residual(x, width):
        y = conv_bn(x, width)
        y = conv_bn(y, width)
        return layers.add([x, y])

    x = conv_bn(x, w[1])
    x = layers.MaxPooling2D(2)(x)
    x = residual(x, w[1])
    x = conv_bn(x, w[2])
    x = layers.MaxPooling2D(2)(x)
    x = conv_bn(x, w[3])
    x = layers.MaxPooling2D(2)(x)
    x = residual(x, w[3])
    x = layers.GlobalMaxPooling2D()(x)
    out = head(x, num_classes, float(cfg.dropout), float(cfg.get("logit_scale", 1.0)), use_bias=False)
    return keras.Model(inputs, out, name="resnet_cifar")


def resnet_small(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """A compact ResNet (basic blocks, He et al. 2016) for photos: a stride-2 stem conv and max-pooling, then
    stages of residual blocks, each stage after the first halving the resolution and widening the channels.

    Cheap enough to train from scratch on a CPU (~110 img/s at 150x150 on 2 cores with widths 32-256, one block
    a stage, against ~6 img/s for xception_small), deep enough for small photo data sets (Dogs vs Cats)."""
    widths = [int(v) for v in cfg.widths]
    blocks = [int(v) for v in cfg.blocks]  # as many as widths: validate_config checks it before any work

    def block(x, width: int, strides: int):
        y = conv_bn(x, width, 3, strides)
        y = layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, gamma_initializer="zeros")(y)  # starts as identity
        if strides != 1 or x.shape[-1] != width:
            x = layers.Conv2D(width, 1, strides=strides, use_bias=False)(x)
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
        return layers.Activation("relu")(layers.add([x, y]))

    inputs, x = _inputs(input_shape, aug, seed)
    x = layers.Rescaling(1.0 / 255)(x)
    x = conv_bn(x, int(cfg.stem_width), 3, strides=2)
    x = layers.MaxPooling2D(2)(x)
    for stage, (width, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            x = block(x, width, 2 if (j == 0 and stage > 0) else 1)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, head(x, num_classes, float(cfg.dropout)), name="resnet_small")


def airbench(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """The network of airbench94 (Keller Jordan's fastest CIFAR-10 recipe), in Keras: a frozen 2x2 patch-whitening
    conv (fitted on training images), GELU, three conv groups (conv, max-pool, BN, GELU, conv, BN, GELU), a final
    max-pool, and a bias-free linear head whose logits are scaled by 1/9. Batch norms learn no scale (bias only),
    use momentum 0.4 (PyTorch's 0.6) and compute in float32; convs start partly as identities (PartialDirac)."""
    widths = [int(v) for v in cfg.widths]
    inputs, x = _inputs(input_shape, aug, seed)
    x = PatchWhitening(name="whiten")(x)
    x = layers.Activation("gelu")(x)

    def bn(x):
        return layers.BatchNormalization(momentum=float(cfg.bn_momentum), epsilon=1e-12, scale=False)(x)

    for i, width in enumerate(widths):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac(seed + 10 * i))(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Activation("gelu")(bn(x))
        x = layers.Conv2D(width, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac(seed + 10 * i + 1))(x)
        x = layers.Activation("gelu")(bn(x))
    x = layers.GlobalMaxPooling2D()(x)  # airbench: MaxPool2d(3) on the final 3x3 map
    out = head(x, num_classes, float(cfg.dropout), float(cfg.logit_scale), use_bias=False)
    return keras.Model(inputs, out, name="airbench")


def _weights_path(weights: Any) -> str | None:
    """None and 'imagenet' pass through; anything else is a local weights file (relative to the project root)."""
    if weights in (None, "imagenet"):
        return weights
    from .common import UserError, project_path

    path = project_path(str(weights))
    if not path.is_file():
        raise UserError(f"model.weights={weights}: no such weights file ({path}); give null, imagenet or an existing file")
    return str(path)


BACKBONES = {  # keras.applications name -> input preprocessing it expects
    "EfficientNetB0": "none",  # rescales internally
    "ResNet50": "caffe",
}


def backbone_model(input_shape, num_classes: int, cfg: DictConfig, aug: DictConfig | None, seed: int) -> keras.Model:
    """Transfer learning: a keras.applications backbone (weights None, 'imagenet' or a local file) + our head."""
    name = str(cfg.backbone)
    if name not in BACKBONES:
        raise ValueError(f"model.backbone={name!r}: expected one of {sorted(BACKBONES)}")
    weights = _weights_path(cfg.weights)
    base = getattr(keras.applications, name)(include_top=False, weights=weights, input_shape=tuple(input_shape),
                                              pooling="avg")
    base.trainable = not bool(cfg.freeze_backbone)
    inputs, x = _inputs(input_shape, aug, seed)
    x = ImageNetPreprocess(BACKBONES[name])(x)
    x = base(x, training=False) if cfg.freeze_backbone else base(x)
    return keras.Model(inputs, head(x, num_classes, float(cfg.dropout)), name=str(cfg.name))


BUILDERS = {
    "seed_cnn": seed_cnn,
    "xception_small": xception_small,
    "xception_mini": xception_mini,
    "resnet_cifar": resnet_cifar,
    "resnet_small": resnet_small,
    "airbench": airbench,
    "efficientnet_b0": backbone_model,
    "resnet50": backbone_model,
}


def build_model(model_cfg: DictConfig, input_shape, num_classes: int, aug: DictConfig | None = None,
                seed: int = 0) -> keras.Model:
    """Build the configured network. Set the dtype policy (keras.config.set_dtype_policy) before calling."""
    model = BUILDERS[str(model_cfg.name)](tuple(input_shape), int(num_classes), model_cfg, aug, int(seed))
    if "backbone" not in model_cfg and model_cfg.get("weights"):
        model.load_weights(_weights_path(model_cfg.weights))  # a from-scratch network's own earlier weights
    return model


CUSTOM_OBJECTS = {"ImageNetPreprocess": ImageNetPreprocess, "RandomFlipZoomShift": RandomFlipZoomShift,
                  "PatchWhitening": PatchWhitening, "PartialDirac": PartialDirac}
