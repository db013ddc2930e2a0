"""The command line end to end (issue 2), as a user runs it: `python -m src.<stage> overrides...` in subprocesses.

One tiny demo pipeline (train -> evaluate -> predict), one run proving that `model`/`dataset` overrides take effect,
and bad input: a non-zero exit status, a clear one-line message, never a traceback."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, path_overrides, run_cli
from imagegen import dogs_vs_cats

pytestmark = pytest.mark.slow


def _ov(base: Path) -> list[str]:
    """Every output, the MLflow store and Hydra's run folder under base (nothing lands in the project)."""
    return [*path_overrides(base), f"hydra.run.dir={base}/hydra"]


def _model_name(path: Path) -> str:
    """The Keras model's name, read from the .keras archive's config (no TensorFlow needed)."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))["config"]["name"]


def _ok(r) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr


def test_demo_pipeline_end_to_end(tmp_path: Path):
    ov = [*TINY, *_ov(tmp_path)]
    r = run_cli("src.train", *ov, "train.epochs=2")
    _ok(r)
    assert "running prepare first" in r.stdout  # no processed data yet: train prepared it
    processed = tmp_path / "processed" / "demo"
    assert (processed / "train.csv").is_file() and (processed / "test.csv").is_file()
    model_dir = tmp_path / "models" / "demo" / "seed_cnn"
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # train.epochs=2 took effect (early stopping cannot act in 2)
    assert _model_name(model_dir / "model.keras") == "seed_cnn"
    run = json.loads((model_dir / "run.json").read_text())
    assert run["epochs_run"] == 2 and run["run_id"]

    r = run_cli("src.evaluate", *ov)
    _ok(r)
    metrics = json.loads((tmp_path / "metrics" / "demo" / "seed_cnn.json").read_text())
    assert metrics["n_val"] == 10 and metrics["run_id"] == run["run_id"] and 0 < metrics["val_log_loss"] < 5

    r = run_cli("src.predict", *ov)
    _ok(r)
    csv = tmp_path / "submissions" / "demo-seed_cnn.csv"
    assert csv.read_text().splitlines()[0] == "id,label"
    sub = pd.read_csv(csv)
    assert sub["id"].tolist() == list(range(1, 13))
    assert sorted(pd.read_csv(tmp_path / "raw" / "demo" / "sample_submission.csv")["id"]) == sub["id"].tolist()
    assert sub["label"].between(metrics["clip"], 1 - metrics["clip"]).all()
    record = json.loads(csv.with_suffix(".json").read_text())
    assert record["run_id"] == run["run_id"] and record["rows"] == 12 and record["clip"] == metrics["clip"]
    assert (tmp_path / "mlflow.db").is_file()  # tracked in the store tracking.uri named


def test_model_and_dataset_overrides_take_effect(tmp_path: Path):
    dogs_vs_cats(tmp_path / "raw" / "dogs_vs_cats", n_per_class=8, n_test=4)
    r = run_cli("src.train", *_ov(tmp_path), "dataset=dogs_vs_cats", "dataset.image_size=40",
                "model=resnet_cifar", "model.widths=[8,16,16,32]", "train.epochs=1", "train.batch_size=8",
                "prepare.workers=1")
    _ok(r)
    assert (tmp_path / "processed" / "dogs_vs_cats" / "train.npy").is_file()
    assert not (tmp_path / "processed" / "demo").exists()
    model = tmp_path / "models" / "dogs_vs_cats" / "resnet_cifar" / "model.keras"
    assert _model_name(model) == "resnet_cifar"
    assert len(json.loads(model.with_name("history.json").read_text())) == 1
    report = json.loads((tmp_path / "processed" / "dogs_vs_cats" / "report.json").read_text())
    assert report["image_size"] == 40 and report["train_images"] + report["val_images"] == 16


def _one_error_line(r, *needles: str) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_missing_raw_folder(tmp_path: Path):
    r = run_cli("src.train", *_ov(tmp_path), "dataset=dogs_vs_cats")
    assert r.returncode == 2
    line = _one_error_line(r, "error:", str(tmp_path / "raw" / "dogs_vs_cats"), "not found")
    assert r.stderr.strip() == line  # exactly one line


def test_empty_test_folder(tmp_path: Path):
    raw = dogs_vs_cats(tmp_path / "raw" / "dogs_vs_cats", n_per_class=3, n_test=2)
    for p in (raw / "test").iterdir():
        p.unlink()
    r = run_cli("src.prepare", *_ov(tmp_path), "dataset=dogs_vs_cats", "prepare.workers=1")
    assert r.returncode == 2
    line = _one_error_line(r, "error:", "test")
    assert r.stderr.strip() == line


def test_bad_config_value(tmp_path: Path):
    r = run_cli("src.train", *_ov(tmp_path), "dataset=demo", "train.epochs=0")
    assert r.returncode == 2
    _one_error_line(r, "train.epochs")
    assert not (tmp_path / "raw").exists()  # stopped before any work


@pytest.mark.parametrize("override, needle", [("train.nope=1", "train.nope"), ("model=nope", "model/nope")])
def test_unknown_key_or_group_option(tmp_path: Path, override: str, needle: str):
    r = run_cli("src.train", *_ov(tmp_path), "dataset=demo", override)
    _one_error_line(r, needle)
    assert not (tmp_path / "raw").exists()
