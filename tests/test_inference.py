"""The prediction files (src/inference.py): models/<dataset>/<name>/predictions/{val,test}.csv and their .json, the
seam between training and everything after it. Train writes them; they hold every validation/test id once, in
manifest order, with one column per class, and are the model's own probabilities (checked against the model run
here, with and without TTA); the .json names the model file (and its sha256), the TTA setting, the classes and the
CSV's own sha256. They are remade when the model file changes, when train.tta changes or when a file was damaged,
and not otherwise. On one tiny trained demo model (shared, copied).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import checked, copy_run, demo_overrides, model_probs
from src import inference
from src.files import file_sha256, read_json
from src.paths import Layout

pytest.importorskip("tensorflow")
SPLITS = ("val", "test")


@pytest.fixture(scope="module")
def base(demo_trained: Path, tmp_path_factory) -> Path:
    return copy_run(demo_trained, tmp_path_factory.mktemp("inference"))


def _cfg(base: Path, *extra: str):
    return checked("evaluate", *demo_overrides(base, *extra))


def _mtimes(lay: Layout) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in lay.predictions_dir.iterdir()}


def _check_files(lay: Layout, base: Path, tta: bool, model_file: Path | None = None) -> None:
    """Both files hold every id once with the right columns, equal to the model's own probabilities."""
    for split in SPLITS:
        csv = lay.predictions(split)
        frame = pd.read_csv(csv, dtype={"id": str} if split == "val" else None)
        df, p = model_probs(base, split, model_file=model_file)
        if tta:
            p = (p + model_probs(base, split, flip=True, model_file=model_file)[1]) / 2
        assert list(frame.columns) == ["id", "label" if split == "val" else "ok", "p_cat", "p_dog"]
        assert frame["id"].tolist() == df["id"].tolist() and frame["id"].is_unique
        assert len(frame) == (10 if split == "val" else 12)
        if split == "val":
            assert frame["label"].tolist() == df["label"].tolist()
        else:
            assert frame["id"].tolist() == list(range(1, 13)) and frame["ok"].all()
        np.testing.assert_allclose(frame["p_dog"], p, atol=1e-6)
        np.testing.assert_allclose(frame["p_cat"], 1 - frame["p_dog"], atol=1e-12)
        meta = read_json(csv.with_suffix(".json"))
        assert meta["split"] == split and meta["tta"] is tta and meta["classes"] == ["cat", "dog"]
        assert meta["rows"] == len(frame) and meta["run_id"] is None                 # tracking was off
        assert meta["model_sha256"] == file_sha256(lay.model) and meta["csv_sha256"] == file_sha256(csv)
        assert meta["model"].endswith("/models/demo/seed_cnn/model.keras")          # outside the project: absolute
        preds = inference.read(csv)
        np.testing.assert_array_equal(preds.probs(), frame["p_dog"].to_numpy())    # P(class 1), 1-D


def test_train_wrote_every_id_once_with_the_models_probabilities(base: Path):
    cfg = _cfg(base)
    lay = Layout(cfg)
    assert sorted(p.name for p in lay.predictions_dir.iterdir()) == ["test.csv", "test.json", "val.csv", "val.json"]
    _check_files(lay, base, tta=False)
    assert all(inference.is_current(cfg, lay, split) for split in SPLITS)


def test_current_files_are_not_remade(base: Path, capsys):
    cfg = _cfg(base)
    lay = Layout(cfg)
    before = _mtimes(lay)
    capsys.readouterr()
    for split in SPLITS:
        preds = inference.predictions(cfg, lay, split)
        assert len(preds.frame) == (10 if split == "val" else 12)
    assert "predicting" not in capsys.readouterr().out
    assert _mtimes(lay) == before
    # settings that do not decide the model's probabilities leave them alone too
    other = _cfg(base, "evaluate.clip=0.02", "evaluate.temperature=auto", "train.batch_size=8", "train.lr=0.5")
    assert all(inference.is_current(other, lay, split) for split in SPLITS)


def test_a_tta_change_remakes_them(base: Path, capsys):
    cfg = _cfg(base, "train.tta=true")
    lay = Layout(cfg)
    assert not any(inference.is_current(cfg, lay, split) for split in SPLITS)
    capsys.readouterr()
    for split in SPLITS:
        inference.predictions(cfg, lay, split)
    assert capsys.readouterr().out.count("predicting") == 2
    _check_files(lay, base, tta=True)                      # the mean over the images and their mirror images
    assert all(inference.is_current(cfg, lay, split) for split in SPLITS)
    for split in SPLITS:                                   # and back: remade without TTA
        inference.predictions(_cfg(base), lay, split)
    _check_files(lay, base, tta=False)


def test_a_new_model_file_remakes_them(base: Path, tmp_path: Path, capsys):
    from src.models import build_model

    cfg = _cfg(base)
    lay = Layout(cfg)
    original = tmp_path / "original.keras"
    original.write_bytes(lay.model.read_bytes())
    other = build_model(cfg.model, (48, 48, 3), 2, cfg.augment, seed=123)  # another network: other weights
    other.save(tmp_path / "other.keras")
    lay.model.write_bytes((tmp_path / "other.keras").read_bytes())
    assert not any(inference.is_current(cfg, lay, split) for split in SPLITS)
    capsys.readouterr()
    for split in SPLITS:
        inference.predictions(cfg, lay, split)
    assert capsys.readouterr().out.count("predicting") == 2
    _check_files(lay, base, tta=False, model_file=tmp_path / "other.keras")
    old = model_probs(base, "val", model_file=original)[1]
    assert not np.allclose(pd.read_csv(lay.predictions("val"))["p_dog"], old, atol=1e-4)  # they really changed
    lay.model.write_bytes(original.read_bytes())            # the trained model back: remade again
    for split in SPLITS:
        inference.predictions(cfg, lay, split)
    _check_files(lay, base, tta=False)


@pytest.mark.parametrize("damage", ["edited_csv", "missing_json", "missing_csv"])
def test_a_damaged_file_is_remade(base: Path, damage: str, capsys):
    cfg = _cfg(base)
    lay = Layout(cfg)
    csv = lay.predictions("val")
    if damage == "edited_csv":
        frame = pd.read_csv(csv, dtype={"id": str})
        frame.loc[0, "p_dog"] = 0.123
        frame.to_csv(csv, index=False)
    elif damage == "missing_json":
        csv.with_suffix(".json").unlink()
    else:
        csv.unlink()
    assert not inference.is_current(cfg, lay, "val") and inference.is_current(cfg, lay, "test")
    capsys.readouterr()
    inference.predictions(cfg, lay, "val")
    assert capsys.readouterr().out.count("predicting") == 1
    _check_files(lay, base, tta=False)


def test_without_a_model_it_names_the_train_command(demo_trained: Path, tmp_path: Path):
    from src.errors import UserError

    copy_run(demo_trained, tmp_path, ("raw", "processed"))
    cfg = _cfg(tmp_path)
    with pytest.raises(UserError, match=r"model.keras not found; train it first: python -m src.train dataset=demo "
                                         r"name=seed_cnn$"):
        inference.predictions(cfg, Layout(cfg), "val")
