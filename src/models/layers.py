"""The building blocks the networks share: input augmentation, preprocessing, the float32 head, and the custom
layers (each registered as Keras-serializable, so a saved .keras model loads without extra arguments)."""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops


# ------------------------------------------------------------------ augmentation (training only)
@keras.saving.register_keras_serializable(package="kagglepipe")
class RandomFlipZoomShift(layers.Layer):
    """Per-image random horizontal flip, zoom, translation and rotation, in training only: one warp per image.

    Without rotation the warp is separable, so it is two small batched matrix products (rows, then columns) with
    bilinear weights; with rotation it is one bilinear sample of four neighbours (flat gathers). Both are fast on
    accelerators under every backend, where Keras' RandomZoom/RandomTranslation/RandomRotation crawl under JAX on
    a GPU (their affine_transform interpolates over a 3-D volume, channels included, through
    jax.scipy.ndimage.map_coordinates). Without zoom or rotation the shifts are whole pixels: an exact
    pad-and-crop. rotation is a fraction of a full turn (0.05: up to +-18 degrees), as in Keras. fill_mode says
    what lies beyond the edges: reflect (mirrored about the edge pixels), nearest (the edge pixel repeated),
    wrap (the opposite edge) or constant (black).
    """

    def __init__(self, flip: bool = False, zoom: float = 0.0, translate: float = 0.0, seed: int | None = None,
                 fill_mode: str = "reflect", rotation: float = 0.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.flip, self.zoom, self.translate, self.seed = bool(flip), float(zoom), float(translate), seed
        self.fill_mode, self.rotation = str(fill_mode), float(rotation)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _remap(self, c, n: int):
        """Source coordinates beyond the edges, mapped back in as fill_mode says (constant: left as they are)."""
        if self.fill_mode == "reflect":
            period = 2.0 * (n - 1)
            c = ops.mod(c, period)
            return ops.where(c > n - 1, period - c, c)
        if self.fill_mode == "nearest":
            return ops.clip(c, 0.0, n - 1.0)
        return c

    def _weights(self, n: int, scale, shift):
        """(B, n_out, n_in) bilinear sampling matrices: output pixel i reads input coordinate c_i."""
        i = ops.arange(n, dtype="float32")
        c = self._remap((i[None, :] + 0.5 - n / 2) * scale[:, None] + n / 2 - 0.5 + shift[:, None], n)
        distance = ops.abs(c[:, :, None] - i[None, None, :])
        if self.fill_mode == "wrap":
            distance = ops.mod(distance, float(n))
            distance = ops.minimum(distance, n - distance)
        return ops.relu(1.0 - distance)  # constant: nothing to read beyond the edges, so black

    def call(self, x, training=None):
        x = ops.cast(x, self.compute_dtype)
        if not training:
            return x
        b = ops.shape(x)[0]
        h, w = int(x.shape[1]), int(x.shape[2])
        u = keras.random.uniform((5 if self.rotation else 4, b), seed=self.seed_generator)
        scale = 1.0 + self.zoom * (2.0 * u[0] - 1.0)
        ty, tx = self.translate * h * (2.0 * u[1] - 1.0), self.translate * w * (2.0 * u[2] - 1.0)
        if not (self.zoom or self.rotation):
            ty, tx = ops.round(ty), ops.round(tx)
        sx = scale * ops.where(u[3] < 0.5, -1.0, 1.0) if self.flip else scale
        if self.rotation:
            angle = self.rotation * 2.0 * np.pi * (2.0 * u[4] - 1.0)
            return self._sample(x, ops.cos(angle), ops.sin(angle), scale, sx, ty, tx)
        ay = ops.cast(self._weights(h, scale, ty), self.compute_dtype)
        ax = ops.cast(self._weights(w, sx, tx), self.compute_dtype)
        x = ops.einsum("bij,bjwc->biwc", ay, x)
        return ops.einsum("bkw,biwc->bikc", ax, x)

    def _sample(self, x, cos, sin, sy, sx, ty, tx):
        """The rotated warp: each output pixel's source point (rotation of the zoomed, flipped offset from the
        centre, then the shift), read by bilinear interpolation of its four neighbours."""
        b, h, w, c = ops.shape(x)[0], int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        yc = (ops.arange(h, dtype="float32") + 0.5 - h / 2)[None, :, None]
        xc = (ops.arange(w, dtype="float32") + 0.5 - w / 2)[None, None, :]
        cos, sin, sy, sx = (v[:, None, None] for v in (cos, sin, sy, sx))
        ys = self._remap(cos * sy * yc - sin * sx * xc + h / 2 - 0.5 + ty[:, None, None], h)
        xs = self._remap(sin * sy * yc + cos * sx * xc + w / 2 - 0.5 + tx[:, None, None], w)
        y0, x0 = ops.floor(ys), ops.floor(xs)
        flat = ops.reshape(x, (-1, c))
        base = (ops.arange(b, dtype="int32") * (h * w))[:, None, None]
        out = 0.0
        for dy in (0.0, 1.0):
            for dx in (0.0, 1.0):
                yi, xi = y0 + dy, x0 + dx
                weight = (1.0 - ops.abs(ys - yi)) * (1.0 - ops.abs(xs - xi))
                if self.fill_mode == "constant":  # neighbours beyond the edges read black
                    weight = weight * ops.cast((yi >= 0) & (yi <= h - 1) & (xi >= 0) & (xi <= w - 1), "float32")
                if self.fill_mode == "wrap":
                    yi, xi = ops.mod(yi, float(h)), ops.mod(xi, float(w))
                yi, xi = ops.clip(yi, 0, h - 1), ops.clip(xi, 0, w - 1)
                index = base + ops.cast(yi, "int32") * w + ops.cast(xi, "int32")
                pixels = ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0), (b, h, w, c))
                out = out + ops.cast(weight, self.compute_dtype)[..., None] * pixels
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "flip": self.flip, "zoom": self.zoom, "translate": self.translate,
                "seed": self.seed, "fill_mode": self.fill_mode, "rotation": self.rotation}


def augmentation(aug: Any, seed: int) -> list[layers.Layer]:
    """The random augmentation layers the `augment` config asks for (identity at inference)."""
    if aug is None:
        return []
    out: list[layers.Layer] = []
    if aug.flip or aug.zoom or aug.translate or aug.rotation:
        out.append(RandomFlipZoomShift(bool(aug.flip), float(aug.zoom), float(aug.translate), seed=seed,
                                       fill_mode=str(aug.fill_mode), rotation=float(aug.rotation)))
    if aug.contrast:
        out.append(layers.RandomContrast(float(aug.contrast), value_range=(0, 255), seed=seed + 4))
    return out


def inputs(input_shape, aug: Any, seed: int):
    """The model's uint8 image input and the augmented tensor after it."""
    image = keras.Input(shape=input_shape, name="image")
    x = image
    for layer in augmentation(aug, seed):
        x = layer(x)
    return image, x


# ------------------------------------------------------------------ preprocessing for keras.applications
@keras.saving.register_keras_serializable(package="kagglepipe")
class ImageNetPreprocess(layers.Layer):
    """keras.applications preprocessing as a layer (0..255 RGB in): 'caffe' (BGR, mean-subtracted), 'torch', 'tf'
    or 'none' (the backbone rescales by itself)."""

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


# ------------------------------------------------------------------ airbench's pieces
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
        self.mean = self.add_weight(shape=(c,), initializer="zeros", trainable=False, name="mean")
        self.std = self.add_weight(shape=(c,), initializer="ones", trainable=False, name="std")
        self.kernel = self.add_weight(shape=(2, 2, c, 8 * c), initializer="glorot_uniform", trainable=False,
                                      name="kernel")
        self.bias = self.add_weight(shape=(8 * c,), initializer="zeros", trainable=True, name="bias")

    def fit_to_data(self, images) -> None:
        """images: uint8 (N, H, W, C), a few thousand training images."""
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


# ------------------------------------------------------------------ the output
def head(x, num_classes: int, dropout: float = 0.0, logit_scale: float = 1.0, use_bias: bool = True):
    """Float32 output layer: P(class 1) for two classes, softmax otherwise (logits optionally scaled)."""
    if dropout:
        x = layers.Dropout(dropout)(x)
    binary = num_classes == 2
    x = layers.Dense(1 if binary else num_classes, dtype="float32", use_bias=use_bias,
                     name="logit" if binary else "logits")(x)
    if logit_scale != 1.0:
        x = layers.Rescaling(logit_scale, dtype="float32", name="logit_scale")(x)
    return layers.Activation("sigmoid" if binary else "softmax", dtype="float32",
                             name="probability" if binary else "probabilities")(x)


def conv_bn(x, filters: int, kernel: int = 3, strides: int = 1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    return layers.Activation("relu")(x)
