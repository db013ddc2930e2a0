"""The configuration's schema (src/config.py), checked in process: config.check(cfg, stage) before any work. Every
shipped dataset and experiment config is valid for every stage; each wrong value is one line naming the key, the
value and what is allowed; an unknown or missing key, a broken interpolation and a labels_csv layout without its
file are caught too; the model's own keys (declared beside each builder, src/models/) are checked for the train
stage only, the stage that builds a model. Unknown keys and group options on the command line are Hydra's to reject
(test_cli.py runs them as a user would).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import HydraException

from conftest import compose
from src.config import check
from src.errors import UserError

CONF = Path(__file__).parent.parent / "conf"
STAGES = ["prepare", "train", "evaluate", "predict"]


def _error(*overrides: str, stage: str | None = None, cfg=None) -> str:
    cfg = compose(*overrides) if cfg is None else cfg
    with pytest.raises(UserError) as e:
        check(cfg, stage)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config error: "), msg
    return msg


@pytest.mark.parametrize("dataset", sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")))
def test_shipped_configs_are_valid(dataset: str):
    cfg = compose(f"dataset={dataset}")
    for stage in [None, *STAGES]:
        check(cfg, stage)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_shipped_experiments_are_valid(experiment: str):
    cfg = compose(f"+experiment={experiment}")
    for stage in [None, *STAGES]:
        check(cfg, stage)


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_shipped_models_are_valid(model: str):
    check(compose(f"model={model}"), "train")


@pytest.mark.parametrize("override, key, allowed", [
    ("train.epochs=abc", "train.epochs", "an integer >= 1"),
    ("train.epochs=-3", "train.epochs", "an integer >= 1"),
    ("train.epochs=0", "train.epochs", "an integer >= 1"),
    ("train.epochs=2.5", "train.epochs", "an integer >= 1"),
    ("train.epochs=true", "train.epochs", "an integer >= 1"),
    ("train.epochs=null", "train.epochs", "an integer >= 1"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction", "a number in (0, 1)"),
    ("dataset.val_fraction=0", "dataset.val_fraction", "a number in (0, 1)"),
    ("dataset.val_fraction=1", "dataset.val_fraction", "a number in (0, 1)"),
    ("dataset.image_size=0", "dataset.image_size", "an integer from 8 to 1024"),
    ("dataset.image_size=big", "dataset.image_size", "an integer from 8 to 1024"),
    ("dataset.image_size=100000", "dataset.image_size", "an integer from 8 to 1024"),
    ("dataset.resize=squash", "dataset.resize", "one of stretch, pad, crop"),
    ("dataset.layout=folders", "dataset.layout", "one of filename, labels_csv"),
    ("dataset.submission=rank", "dataset.submission", "one of probability, class_name"),
    ("dataset.classes=[cat]", "dataset.classes", "a list of at least 2 non-empty texts"),
    ("dataset.classes=[cat,cat]", "dataset.classes", "a list of at least two distinct class names"),
    ("dataset.image_ext=[]", "dataset.image_ext", "a non-empty list of non-empty texts"),
    ("train.precision=fp8", "train.precision", "one of auto, float32, mixed_float16, mixed_bfloat16"),
    ("train.optimizer=lamb", "train.optimizer", "one of adam, adamw, rmsprop, sgd"),
    ("train.schedule=step", "train.schedule", "one of constant, cosine, onecycle"),
    ("train.distribute=tpu", "train.distribute", "one of none, data_parallel"),
    ("train.lr=0", "train.lr", "a number > 0"),
    ("train.lr=-1e-3", "train.lr", "a number > 0"),
    ("train.lr=fast", "train.lr", "a number > 0"),
    ("train.batch_size=0", "train.batch_size", "an integer >= 1"),
    ("train.label_smoothing=1.0", "train.label_smoothing", "a number in [0, 1)"),
    ("train.ema_momentum=1", "train.ema_momentum", "a number in (0, 1) or null"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience", "an integer >= 0 (0 = never)"),
    ("train.tta=maybe", "train.tta", "true or false"),
    ("train.resume=yes_please", "train.resume", "true or false"),
    ("augment.rotation=2", "augment.rotation", "a number in [0, 0.5]"),
    ("augment.fill_mode=mirror", "augment.fill_mode", "one of reflect, nearest, constant, wrap"),
    ("evaluate.clip=0.7", "evaluate.clip", "auto or a number in (0, 0.5)"),
    ("evaluate.clip=best", "evaluate.clip", "auto or a number in (0, 0.5)"),
    ("evaluate.temperature=0", "evaluate.temperature", "auto or a number in [0.01, 100]"),
    ("evaluate.clip_candidates=[]", "evaluate.clip_candidates", "a non-empty list of numbers in (0, 0.5)"),
    ("prepare.workers=-2", "prepare.workers", "an integer >= 0 (0 = every core)"),
])
def test_wrong_value_names_key_and_allowed_values(override: str, key: str, allowed: str):
    cfg = compose(*override.split(" "))
    msg = _error(cfg=cfg)
    assert f"{key}=" in msg and f"expected {allowed} " in msg, msg
    assert f"(fix it in conf/ or override it, e.g. {key}=...)" in msg, msg
    for stage in STAGES:  # whatever the stage
        assert _error(stage=stage, cfg=cfg) == msg


def test_the_message_shows_the_value_given():
    assert _error("train.epochs=0").startswith("config error: train.epochs=0 is not allowed; expected an integer >= 1")
    assert "train.lr='fast' is not allowed" in _error("train.lr=fast")
    assert "train.tta='maybe' is not allowed" in _error("train.tta=maybe")
    assert "train.epochs=true is not allowed" in _error("train.epochs=true")
    assert "train.epochs=null is not allowed" in _error("train.epochs=null")


@pytest.mark.parametrize("override, key, allowed", [
    ("model.dropout=1.0", "model.dropout", "a number in [0, 1)"),
    ("model.arch=foo", "model.arch", "one of airbench, backbone, features, mlp, resnet_cifar, resnet_small, seed_cnn, "
                                     "xception_mini, xception_small"),
    ("model=resnet_small model.widths=[32,0]", "model.widths", "a non-empty list of integers >= 1"),
    ("model=resnet_small model.blocks=[]", "model.blocks", "a non-empty list of integers >= 1"),
    ("model=resnet_small model.widths=[8,16,32] model.blocks=[1,1]", "model.blocks",
     "one block count per stage: 3 values, as many as model.widths (now 2)"),
    ("model=resnet_cifar model.widths=[8,16,16,32,64]", "model.widths", "a list of exactly 4 integers >= 1"),
    ("model=xception_mini model.stem_strides=3", "model.stem_strides", "one of 1, 2"),
    ("model=xception_mini model.stem_kernel=0", "model.stem_kernel", "an integer from 1 to 11"),
    ("model=xception_small model.head_width=0", "model.head_width", "an integer >= 1"),
    ("model=efficientnet_b0 model.backbone=VGG16", "model.backbone",
     "one of EfficientNetB0, EfficientNetV2B0, EfficientNetV2S, ConvNeXtTiny, ResNet50, ResNet50V2, Xception, "
     "InceptionV3, MobileNet"),
    ("model=efficientnet_b0 model.freeze_backbone=sometimes", "model.freeze_backbone", "true or false"),
])
def test_model_keys_are_checked_for_train_only(override: str, key: str, allowed: str):
    """A model's keys are declared beside its builder: train (which builds it) refuses a wrong one before any work;
    the stages that only read a trained model's outputs are not held up by them."""
    cfg = compose(*override.split(" "))
    msg = _error(stage="train", cfg=cfg)
    assert f"{key}=" in msg and f"expected {allowed}" in msg, msg
    for stage in (None, "prepare", "evaluate", "predict"):
        check(cfg, stage)


def test_unknown_or_missing_keys():
    cfg = compose("+train.foo=1")
    with pytest.raises(UserError, match=r"^config error: train\.foo is not a known key; remove it, or check its "
                                        r"spelling against conf/$"):
        check(cfg)
    assert "model.nope is not a known key" in _error("+model.nope=1", stage="train")
    check(compose("+model.nope=1"), "prepare")  # a model key: checked for train only
    msg = _error("~train.epochs")
    assert msg == "config error: train.epochs is missing; expected an integer >= 1 (add it in conf/ or with +train.epochs=...)"


def test_labels_csv_layout_needs_the_labels_file():
    msg = _error("dataset=cifar10", "dataset.labels_csv=null")
    assert "dataset.labels_csv=null is not allowed" in msg and "dataset.layout=labels_csv" in msg, msg
    check(compose("dataset=dogs_vs_cats", "dataset.labels_csv=null"))  # the filename layout needs none


def test_broken_interpolation_names_the_key():
    msg = _error("dataset.raw_dir=${nope}")
    assert msg == "config error: dataset.raw_dir: Interpolation key 'nope' not found; fix it in conf/ or override it"


@pytest.mark.parametrize("override, words", [
    ("train.foo=1", ["train.foo", "+train.foo=1"]),                   # unknown key: Hydra suggests appending with +
    ("model=foo", ["model/foo", "seed_cnn", "resnet_cifar"]),          # unknown group option: Hydra lists the options
    ("dataset=mnist", ["dataset/mnist", "dogs_vs_cats", "cifar10"]),
])
def test_hydra_rejects_unknown_keys_and_options(override: str, words: list[str]):
    with pytest.raises(HydraException) as e:
        compose(override)
    text = str(e.value) + str(e.value.__cause__ or "")
    for w in words:
        assert w in text, text
