"""Bad configuration (issue 6): every wrong key or value stops a stage before any work, with one clear line.

Unknown keys and unknown group options are Hydra's to reject (its message names the key and lists the options);
types and ranges are src.common.validate_config's.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import HydraException

from conftest import compose, path_overrides, run_cli
from src.common import UserError, validate_config


def _error(*overrides: str) -> str:
    cfg = compose(*overrides)
    with pytest.raises(UserError) as e:
        validate_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("dataset", ["dogs_vs_cats", "cifar10", "demo"])
def test_shipped_configs_are_valid(dataset: str):
    validate_config(compose(f"dataset={dataset}"))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "experiment").glob("*.yaml")))
def test_shipped_experiments_are_valid(experiment: str):
    validate_config(compose(f"+experiment={experiment}"))


@pytest.mark.parametrize("override, key, allowed", [
    ("train.epochs=abc", "train.epochs", "an integer >= 1"),
    ("train.epochs=-3", "train.epochs", "an integer >= 1"),
    ("train.epochs=0", "train.epochs", "an integer >= 1"),
    ("train.epochs=2.5", "train.epochs", "an integer >= 1"),
    ("train.epochs=true", "train.epochs", "an integer >= 1"),
    ("train.epochs=null", "train.epochs", "an integer >= 1"),
    ("dataset.val_fraction=1.5", "dataset.val_fraction", "strictly between 0 and 1"),
    ("dataset.val_fraction=0", "dataset.val_fraction", "strictly between 0 and 1"),
    ("dataset.val_fraction=1", "dataset.val_fraction", "strictly between 0 and 1"),
    ("dataset.image_size=0", "dataset.image_size", "an integer from 8 to 1024"),
    ("dataset.image_size=big", "dataset.image_size", "an integer from 8 to 1024"),
    ("dataset.image_size=100000", "dataset.image_size", "an integer from 8 to 1024"),
    ("dataset.resize=squash", "dataset.resize", "one of stretch, pad, crop"),
    ("dataset.layout=folders", "dataset.layout", "one of filename, labels_csv"),
    ("dataset.submission=rank", "dataset.submission", "one of probability, class_name"),
    ("dataset.classes=[cat]", "dataset.classes", "at least two distinct"),
    ("dataset.classes=[cat,cat]", "dataset.classes", "at least two distinct"),
    ("dataset.image_ext=[]", "dataset.image_ext", "non-empty list"),
    ("train.precision=fp8", "train.precision", "one of auto, float32, mixed_float16, mixed_bfloat16"),
    ("train.optimizer=lamb", "train.optimizer", "one of adam, adamw, rmsprop, sgd"),
    ("train.schedule=step", "train.schedule", "one of constant, cosine, onecycle"),
    ("train.distribute=tpu", "train.distribute", "one of none, data_parallel"),
    ("train.lr=0", "train.lr", "a number > 0"),
    ("train.lr=-1e-3", "train.lr", "a number > 0"),
    ("train.lr=fast", "train.lr", "a number > 0"),
    ("train.batch_size=0", "train.batch_size", "an integer >= 1"),
    ("train.label_smoothing=1.0", "train.label_smoothing", "[0, 1)"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience", "an integer >= 0"),
    ("train.tta=maybe", "train.tta", "true or false"),
    ("train.resume=yes_please", "train.resume", "true or false"),
    ("model.dropout=1.0", "model.dropout", "[0, 1)"),
    ("augment.rotation=2", "augment.rotation", "[0, 0.5]"),
    ("evaluate.clip=0.7", "evaluate.clip", "auto or a number in (0, 0.5)"),
    ("evaluate.clip=best", "evaluate.clip", "auto or a number in (0, 0.5)"),
    ("prepare.workers=-2", "prepare.workers", "an integer >= 0"),
    ("model.name=foo", "model.name", "one of seed_cnn"),
    ("model=resnet_small model.widths=[32,0]", "model.widths", "a non-empty list of positive integers"),
    ("model=resnet_small model.blocks=[]", "model.blocks", "a non-empty list of positive integers"),
    ("model=xception_mini model.stem_strides=3", "model.stem_strides", "1 or 2"),
    ("model=xception_mini model.stem_kernel=0", "model.stem_kernel", "an integer from 1 to 11"),
])
def test_wrong_value_names_key_and_allowed_values(override: str, key: str, allowed: str):
    msg = _error(*override.split(" "))
    assert f"{key}=" in msg and allowed in msg, msg


def test_labels_csv_layout_needs_the_labels_file():
    assert "dataset.labels_csv" in _error("dataset=cifar10", "dataset.labels_csv=null")


def test_broken_interpolation_names_the_key():
    msg = _error("dataset.raw_dir=${nope}")
    assert "dataset.raw_dir" in msg and "nope" in msg


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


def _outputs(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and "hydra" not in p.relative_to(base).parts]


@pytest.mark.slow
@pytest.mark.parametrize("module, override", [("src.train", "train.precision=fp8"), ("src.prepare", "dataset.val_fraction=1.5")])
def test_cli_bad_value_one_line_no_work(tmp_path: Path, module: str, override: str):
    r = run_cli(module, *path_overrides(tmp_path), "dataset=demo", override, f"hydra.run.dir={tmp_path}/hydra")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and override.split("=")[0] in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert _outputs(tmp_path) == []   # nothing generated, prepared, trained or tracked


@pytest.mark.slow
def test_cli_unknown_key_rejected_by_hydra(tmp_path: Path):
    r = run_cli("src.prepare", *path_overrides(tmp_path), "dataset=demo", "train.foo=1", f"hydra.run.dir={tmp_path}/hydra")
    assert r.returncode != 0
    assert "train.foo" in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert _outputs(tmp_path) == []
