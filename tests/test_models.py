"""The networks (src/models/): every model config builds through its registered `arch` and gives float32
probabilities under mixed_float16; keras.applications backbones build offline (weights=null) and from a local
weights file, each with the input preprocessing its Keras module prescribes; a missing weights file, a file for
another network or shape, ImageNet weights offline (one line naming the file Keras wants and where it goes) or too
small an input is a one-line UserError; the augmentation layer honours
augment.fill_mode; airbench's patch whitening whitens; custom layers load back with plain keras.saving.load_model
(no custom_objects)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import compose, path_overrides, run_cli, write_notop_weights
from src.errors import UserError

keras = pytest.importorskip("keras")
from src.models import architectures, build_model, model_params  # noqa: E402
from src.models.layers import PatchWhitening, RandomFlipZoomShift, data_fitted_layers  # noqa: E402


@pytest.fixture
def policy():
    """Set a dtype policy for one test, then restore float32 (the policy is process-global)."""
    def set_(name: str):
        keras.config.set_dtype_policy(name)
    yield set_
    keras.config.set_dtype_policy("float32")


def _cfg(model: str, *extra: str):
    return compose(f"model={model}", *extra)


def _batch(size: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3)).astype("uint8")


CASES = [  # model, overrides, image size, classes
    ("seed_cnn", [], 48, 2),
    ("seed_cnn", [], 48, 10),
    ("xception_small", [], 48, 2),
    ("xception_mini", [], 48, 2),
    ("xception_mini", ["model.stem_strides=2", "model.widths=[16,32]"], 48, 10),
    ("resnet_small", [], 48, 2),
    ("resnet_small", ["model.widths=[8,16]", "model.blocks=[2,1]"], 32, 10),
    ("resnet_cifar", [], 32, 10),
    ("resnet_cifar", ["model.widths=[8,16,16,32]"], 64, 2),
    ("efficientnet_b0", [], 64, 2),
    ("resnet50", [], 64, 10),
    ("mobilenet", [], 32, 2),
    ("mlp", [], 48, 10),
    ("mlp", ["model.input_size=null", "model.hidden=[8]"], 32, 2),
    ("pixels", [], 48, 2),
    ("features", ["model.backbones=[MobileNet,pixels]", "model.head=mlp"], 32, 3),
]
# Too slow to build in the suite (seconds to tens of seconds each on 2 cores): built, trained and timed by
# benchmarks/backbones.py; their preprocessing is checked below.
BUILT_IN_BENCHMARK = {"efficientnet_v2_b0", "efficientnet_v2_s", "convnext_tiny", "resnet50_v2", "xception",
                      "inception_v3"}


@pytest.mark.parametrize("name, extra, size, k", CASES, ids=[f"{c[0]}-{c[2]}px-{c[3]}cls" + ("-narrow" if c[1] else "")
                                                             for c in CASES])
def test_builds_with_float32_probabilities_under_mixed_precision(policy, name, extra, size, k):
    policy("mixed_float16")
    cfg = _cfg(name, *extra)
    model = build_model(cfg.model, (size, size, 3), k, cfg.augment, seed=0)
    assert model.name == name and model_params(cfg.model).arch == cfg.model.arch
    assert any(getattr(layer, "compute_dtype", None) == "float16" for layer in model.layers), "policy not applied"
    assert model.outputs[0].dtype == "float32"
    x = _batch(size)
    p = np.asarray(model.predict(x, verbose=0))
    assert p.dtype == np.float32 and np.isfinite(p).all()
    if k == 2:
        assert p.shape == (3, 1) and ((p >= 0) & (p <= 1)).all()
    else:
        assert p.shape == (3, k) and (p >= 0).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-4)
    if "backbone" not in cfg.model:  # augmentation layers run in training mode and keep the shape
        assert tuple(model(x, training=True).shape) == p.shape


def test_seed_cnn_too_small_is_a_user_error():
    cfg = _cfg("seed_cnn")
    with pytest.raises(UserError, match="46"):
        build_model(cfg.model, (32, 32, 3), 2, cfg.augment)


def _backbone(model):
    subs = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(subs) == 1
    return subs[0]


@pytest.mark.parametrize("name, app", [("efficientnet_b0", "EfficientNetB0"), ("resnet50", "ResNet50"),
                                       ("mobilenet", "MobileNet")])
def test_backbone_offline_and_from_a_local_weights_file(policy, tmp_path: Path, name: str, app: str):
    policy("float32")
    notop = getattr(keras.applications, app)(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    rng = np.random.default_rng(7)  # distinctive values no initialiser would produce
    notop.set_weights([np.abs(rng.normal(0.5, 0.1, w.shape)).astype(w.dtype) for w in notop.get_weights()])
    path = tmp_path / "x.weights.h5"
    notop.save_weights(path)
    saved = notop.get_weights()

    cfg = _cfg(name, f"model.weights={path}")
    model = build_model(cfg.model, (64, 64, 3), 2, cfg.augment)
    loaded = _backbone(model).get_weights()
    assert len(loaded) == len(saved)
    for a, b in zip(loaded, saved):
        np.testing.assert_array_equal(a, b)
    assert not _backbone(model).trainable  # freeze_backbone: true by default


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet50", "seed_cnn"])
def test_missing_weights_file_is_a_user_error(tmp_path: Path, name: str):
    cfg = _cfg(name, f"model.weights={tmp_path}/nope.weights.h5")
    with pytest.raises(UserError, match="nope.weights.h5"):
        build_model(cfg.model, (64, 64, 3), 2, cfg.augment)


def test_every_model_config_names_a_registered_builder():
    shipped = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "model").glob("*.yaml"))
    assert shipped == sorted({c[0] for c in CASES} | {"airbench", "xception_small"} | BUILT_IN_BENCHMARK)
    assert {str(_cfg(m).model.arch) for m in shipped} == set(architectures())


MODULES = {"EfficientNetB0": "efficientnet", "EfficientNetV2B0": "efficientnet_v2",
           "EfficientNetV2S": "efficientnet_v2", "ConvNeXtTiny": "convnext", "ResNet50": "resnet50", "ResNet50V2": "resnet_v2", "Xception": "xception",
           "InceptionV3": "inception_v3", "MobileNet": "mobilenet"}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_backbone_gets_the_preprocessing_its_keras_module_prescribes(name: str):
    from src.models.layers import ImageNetPreprocess
    from src.models.weights import NETWORKS

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    want = getattr(keras.applications, MODULES[name]).preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(ImageNetPreprocess(NETWORKS[name].preprocessing)(x)), want, rtol=1e-5,
                               atol=1e-4)
    if NETWORKS[name].preprocessing == "none" and name != "EfficientNetB0":  # B0: built in CASES, checked below
        import inspect

        assert inspect.signature(getattr(keras.applications, name)).parameters["include_preprocessing"].default


def test_efficientnet_b0_rescales_inside_itself():
    from src.models.weights import network

    kinds = {type(layer).__name__ for layer in network("EfficientNetB0", (32, 32, 3), None).layers}
    assert {"Rescaling", "Normalization"} <= kinds


@pytest.mark.parametrize("model, size, words", [("xception", 64, "Xception needs images of at least 71x71"),
                                                ("inception_v3", 72, "InceptionV3 needs images of at least 75x75")])
def test_too_small_an_image_for_a_backbone_is_one_line_before_any_work(model: str, size: int, words: str):
    from src.models import check_model

    with pytest.raises(UserError, match=words):
        check_model(_cfg(model).model, size)


def test_a_weights_file_of_another_shape_or_network_is_one_line(tmp_path: Path):
    from src.models import check_model

    narrow = write_notop_weights(tmp_path / "half.weights.h5", alpha=0.5)    # MobileNet at half the width
    other = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(other)
    for path in (narrow, other):
        with pytest.raises(UserError) as e:
            check_model(_cfg("mobilenet", f"model.weights={path}").model, 32)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"model.weights={path}: not a no-top weights file of MobileNet"), msg


def test_imagenet_weights_offline_is_one_line_naming_the_file_and_the_folder(tmp_path: Path):
    """The download is refused at once (a proxy on a closed local port), whatever network the machine has."""
    proxy = "http://127.0.0.1:9"
    r = run_cli("src.train", "dataset=demo", "model=mobilenet", "model.weights=imagenet", *path_overrides(tmp_path),
                env={"KERAS_HOME": str(tmp_path / "keras"), "https_proxy": proxy, "HTTPS_PROXY": proxy,
                     "no_proxy": "", "NO_PROXY": ""}, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.weights=imagenet: Keras could not download "
                                                   "mobilenet_1_0_224_tf_no_top.h5 for MobileNet"), r.stderr
    assert f"put it in {tmp_path / 'keras' / 'models'}/" in lines[0]
    assert "Downloading" not in r.stdout and not (tmp_path / "raw").exists()  # checked before any work


def test_renamed_model_keeps_its_builder():
    cfg = _cfg("seed_cnn", "model.name=my_cnn")
    model = build_model(cfg.model, (48, 48, 3), 2, cfg.augment)
    assert model.name == "my_cnn"
    assert [type(layer).__name__ for layer in model.layers if "Conv" in type(layer).__name__] == ["Conv2D"] * 4


def test_xception_small_has_stem_blocks_and_head_width(policy):
    policy("float32")
    cfg = _cfg("xception_small", "model.stem_width=8", "model.widths=[16,24]", "model.head_width=40")
    model = build_model(cfg.model, (48, 48, 3), 2, cfg.augment)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
             and not isinstance(layer, keras.layers.SeparableConv2D)]
    seps = [layer for layer in model.layers if isinstance(layer, keras.layers.SeparableConv2D)]
    assert convs[0].filters == 8 and convs[0].strides == (2, 2)                      # the stride-2 stem
    assert [layer.filters for layer in seps] == [16, 16, 24, 24, 40]                 # two per block, then the head
    assert model.get_layer(index=-4).output.shape[-1] == 40  # the pooled features have head_width channels


def test_patch_whitening_whitens_patches_of_the_images_it_was_fitted_on(policy):
    """airbench's first layer: after fit_to_data, the 2x2 patches of those images come out decorrelated with unit
    variance (each whitened direction appears twice, with both signs); the kernel is frozen, the bias trains."""
    policy("float32")
    rng = np.random.default_rng(0)
    base = rng.normal(size=(64, 9, 9, 3))
    smooth = base[:, :8, :8] + base[:, 1:, 1:] + 0.5 * base[:, 1:, :8]  # correlated neighbours and channels
    images = np.clip(128 + 30 * smooth, 0, 255).astype("uint8")
    layer = PatchWhitening()
    layer.build((None, 8, 8, 3))
    layer.fit_to_data(images)
    out = np.asarray(layer(images.astype("float32")))
    assert out.shape == (64, 7, 7, 24)
    z = out[..., :12].reshape(-1, 12)
    np.testing.assert_allclose(out[..., 12:], -out[..., :12], atol=1e-5)
    np.testing.assert_allclose(z.T @ z / len(z), np.eye(12), atol=0.05)  # eps=5e-4 shrinks it only slightly
    assert [w.name for w in layer.trainable_weights] == ["bias"]


def test_airbench_builds_from_data_and_round_trips(policy, tmp_path: Path):
    policy("mixed_float16")
    cfg = _cfg("airbench", "model.widths=[8,16,16]")
    model = build_model(cfg.model, (32, 32, 3), 10, cfg.augment, seed=0)
    (whiten,) = data_fitted_layers(model)
    whiten.fit_to_data(_batch(32, 20))
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    k = np.asarray(conv.kernel)
    assert k.shape == (3, 3, 24, 8) and (k[1, 1, np.arange(8), np.arange(8)] == 1).all()  # identities first
    p = np.asarray(model.predict(_batch(32), verbose=0))
    assert p.dtype == np.float32 and p.shape == (3, 10)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")  # registered layers: no custom_objects needed
    np.testing.assert_allclose(np.asarray(again.predict(_batch(32), verbose=0)), p, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ augmentation: fill modes
NUMPY_PAD = {"reflect": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


def _shifted(img: np.ndarray, dy: int, dx: int, mode: str, pad: int) -> np.ndarray:
    """img moved by whole pixels (output pixel i shows input pixel i + d), the edges filled numpy's way."""
    n = img.shape[0]
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode=NUMPY_PAD[mode])
    return padded[pad + dy:pad + dy + n, pad + dx:pad + dx + n]


@pytest.mark.parametrize("mode", sorted(NUMPY_PAD))
def test_shift_fills_the_edges_as_augment_fill_mode_says(policy, mode: str):
    """translate without zoom is an exact whole-pixel shift: what shows beyond the edges is the configured
    fill_mode's (reflect about the edge pixels, the edge pixel repeated, the opposite edge, or black)."""
    policy("float32")
    n, pad = 8, 2  # translate 0.25 of 8 pixels: shifts of -2..2
    x = np.random.default_rng(1).integers(1, 256, size=(24, n, n, 3)).astype("float32")
    layer = RandomFlipZoomShift(translate=0.25, seed=3, fill_mode=mode)
    out = np.asarray(layer(x, training=True))
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)  # inference: untouched
    told_apart = 0
    for img, o in zip(x, out):
        matches = {(m, dy, dx) for m in NUMPY_PAD for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if np.allclose(o, _shifted(img, dy, dx, m, pad), atol=1e-3)}
        assert any(m == mode for m, _, _ in matches), (mode, sorted(matches))
        told_apart += all(m == mode for m, _, _ in matches)  # a shift no other fill mode explains
    assert told_apart >= 12, told_apart
    again = RandomFlipZoomShift.from_config(layer.get_config())
    assert again.fill_mode == mode and again.translate == 0.25


def test_model_augmentation_takes_fill_mode_and_rotation_from_the_config_and_keeps_them(policy, tmp_path: Path):
    """Rotation is part of the one warp (no Keras RandomRotation, which crawls under JAX on a GPU)."""
    policy("float32")
    cfg = _cfg("seed_cnn", "augment.fill_mode=wrap", "augment.rotation=0.1")
    model = build_model(cfg.model, (48, 48, 3), 2, cfg.augment)
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.RandomRotation)]
    (warp,) = [layer for layer in model.layers if isinstance(layer, RandomFlipZoomShift)]
    assert warp.fill_mode == "wrap" and warp.rotation == 0.1
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    (warp,) = [layer for layer in again.layers if isinstance(layer, RandomFlipZoomShift)]
    assert warp.fill_mode == "wrap" and warp.rotation == 0.1
    old = {k: v for k, v in warp.get_config().items() if k != "rotation"}  # saved before rotation was a key
    assert RandomFlipZoomShift.from_config(old).rotation == 0.0


def _rotate_numpy(img: np.ndarray, angle: float) -> np.ndarray:
    """Bilinear rotation about the centre, computed independently (black beyond the edges)."""
    h, w, _ = img.shape
    out = np.zeros_like(img)
    c, s = np.cos(angle), np.sin(angle)
    for i in range(h):
        for j in range(w):
            yc, xc = i + 0.5 - h / 2, j + 0.5 - w / 2
            y, x = c * yc - s * xc + h / 2 - 0.5, s * yc + c * xc + w / 2 - 0.5
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for yy, xx in ((y0, x0), (y0 + 1, x0), (y0, x0 + 1), (y0 + 1, x0 + 1)):
                if 0 <= yy < h and 0 <= xx < w:
                    out[i, j] += (1 - abs(y - yy)) * (1 - abs(x - xx)) * img[yy, xx]
    return out


def test_rotation_is_a_bilinear_rotation_about_the_centre(policy):
    policy("float32")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, size=(6, 12, 12, 3)).astype("float32")
    layer = RandomFlipZoomShift(rotation=0.2, seed=5, fill_mode="constant")
    out = np.asarray(layer(x, training=True))
    seen = set()
    for img, o in zip(x, out):  # each image is one rotation of itself; find its angle on a fine grid
        errors = {a: np.abs(_rotate_numpy(img, a) - o).max() for a in np.linspace(-0.4 * np.pi, 0.4 * np.pi, 721)}
        best = min(errors, key=errors.get)
        assert errors[best] < 2.5, errors[best]      # within 1/360 of a turn of a true rotation
        seen.add(round(best, 2))
    assert len(seen) > 3  # and a different angle per image
    quarter = np.asarray(layer._sample(keras.ops.convert_to_tensor(x), *(keras.ops.convert_to_tensor(v) for v in (
        np.zeros(6, "float32"), np.ones(6, "float32"), np.ones(6, "float32"), np.ones(6, "float32"),
        np.zeros(6, "float32"), np.zeros(6, "float32")))))
    np.testing.assert_allclose(quarter, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-3)  # exactly a quarter turn


def test_mixed_float16_scales_the_loss_and_keeps_norms_and_head_in_float32(policy):
    """What mixed precision needs on a GPU: loss scaling (Keras wraps the optimizer), batch norm statistics and
    the output in float32 (the head's layers are float32; BatchNormalization upcasts its inputs itself)."""
    from src.optimizer import compile_model

    policy("mixed_float16")
    cfg = _cfg("resnet_small", "model.widths=[8,16]", "model.blocks=[1,1]")
    model = build_model(cfg.model, (32, 32, 3), 2, cfg.augment)
    compile_model(model, cfg, 2, steps_per_epoch=3)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(v.dtype == "float32" for layer in norms for v in layer.weights)
    assert all(layer.compute_dtype == "float32" for layer in model.layers if layer.name in ("logit", "probability"))
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "float16" and conv.kernel.dtype == "float32"  # float16 math, float32 weights
    policy("mixed_bfloat16")
    model = build_model(cfg.model, (32, 32, 3), 2, cfg.augment)
    compile_model(model, cfg, 2, steps_per_epoch=3)
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # bfloat16 has float32's range


def test_speed_run_recipe_wires_ema_label_smoothing_and_whitening():
    """cifar10_speed's substitutes for airbench's tricks are what they say: label smoothing in the loss, the weight
    EMA (train.ema_momentum) copied into the model once an epoch, the frozen whitening layer first."""
    from src.optimizer import compile_model, make_optimizer

    cfg = _cfg("airbench", "+experiment=cifar10_speed", "train.ema_momentum=0.9", "train.precision=float32")
    opt = make_optimizer(cfg, steps_per_epoch=7)
    assert opt.use_ema and opt.ema_momentum == 0.9 and opt.ema_overwrite_frequency == 7
    model = build_model(cfg.model, (32, 32, 3), 10, cfg.augment)
    compile_model(model, cfg, 10, steps_per_epoch=7)
    assert model.loss.label_smoothing == 0.2
    whiten = model.get_layer("whiten")
    assert model.layers.index(whiten) <= 2  # right after the input and its augmentation
    assert [w.name for w in whiten.trainable_weights] == ["bias"]  # only the bias trains
