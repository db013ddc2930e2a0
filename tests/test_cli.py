"""The command line as a user runs it (src/cli.py): `python -m src.<stage> overrides...` in subprocesses. One tiny demo
pipeline end to end (train, which prepares first, then evaluate and predict), one run proving that `model`/`dataset`
overrides take effect, and mistakes: a bad value, an unknown key or group option, a missing raw folder, an empty
test folder, ids that do not pair up. Each is exit status 2 and exactly one line on stderr (`error: ...`, naming the
key or file), never a traceback, and nothing generated, prepared, trained or tracked. Ctrl-C and SIGTERM end a
command with 130 and 143 (in process here; a real training run: test_train.py).
"""
from __future__ import annotations

import json
import os
import signal
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY, compose, path_overrides, run_cli
from imagegen import dogs_vs_cats, small_dogs_vs_cats

pytestmark = pytest.mark.slow


def _ov(base: Path) -> list[str]:
    """Every output, the MLflow store and Hydra's run folder under base (nothing lands in the project)."""
    return [*path_overrides(base), f"hydra.run.dir={base}/hydra"]


def _outputs(base: Path) -> list[Path]:
    """Every file a command left under base, besides Hydra's own run folder, the raw data given to it and the
    empty lock file that lets parallel jobs take turns at preparing (processed/.<dataset>.prepare.lock)."""
    return [p for p in base.rglob("*") if p.is_file() and not {"hydra", "raw"} & set(p.relative_to(base).parts)
            and not p.name.endswith(".prepare.lock")]


def _model_name(path: Path) -> str:
    """The Keras model's name, read from the .keras archive's config (no TensorFlow needed)."""
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))["config"]["name"]


def _ok(r) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr


def _one_error_line(r, *needles: str) -> str:
    """Exit 2, exactly one line on stderr, starting with `error:` and holding every needle; no traceback."""
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ------------------------------------------------------------------ it works
def test_demo_pipeline_end_to_end(tmp_path: Path):
    ov = [*TINY, *_ov(tmp_path)]
    r = run_cli("src.train", *ov, "train.epochs=2")
    _ok(r)
    assert "train: the prepare stage's outputs are missing or out of date; running prepare first" in r.stdout
    processed = tmp_path / "processed" / "demo"
    assert (processed / "train.csv").is_file() and (processed / "test.csv").is_file()
    model_dir = tmp_path / "models" / "demo" / "seed_cnn"
    history = json.loads((model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # train.epochs=2 took effect (early stopping cannot act in 2)
    assert _model_name(model_dir / "model.keras") == "seed_cnn"
    run = json.loads((model_dir / "run.json").read_text())
    assert run["epochs_run"] == 2 and run["run_id"]
    assert sorted(p.name for p in (model_dir / "predictions").iterdir()) == ["test.csv", "test.json", "val.csv",
                                                                             "val.json"]

    r = run_cli("src.evaluate", *ov)
    _ok(r)
    assert "first" not in r.stdout  # prepare current, the model there: evaluate alone
    metrics = json.loads((tmp_path / "metrics" / "demo" / "seed_cnn.json").read_text())
    assert metrics["n_val"] == 10 and metrics["run_id"] == run["run_id"] and 0 < metrics["val_log_loss"] < 5

    r = run_cli("src.predict", *ov)
    _ok(r)
    assert "first" not in r.stdout  # evaluate current: predict alone
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


# ------------------------------------------------------------------ mistakes: one line, exit 2, no work
@pytest.mark.parametrize("module, override, shown, allowed", [
    ("src.train", "train.epochs=0", "train.epochs=0", "expected an integer >= 1"),
    ("src.evaluate", "train.precision=fp8", "train.precision='fp8'",
     "expected one of auto, float32, mixed_float16, mixed_bfloat16"),
    ("src.prepare", "dataset.val_fraction=1.5", "dataset.val_fraction=1.5", "expected a number in (0, 1)"),
])
def test_bad_config_value(tmp_path: Path, module: str, override: str, shown: str, allowed: str):
    r = run_cli(module, *_ov(tmp_path), "dataset=demo", override)
    _one_error_line(r, f"error: config error: {shown} is not allowed", allowed)
    assert _outputs(tmp_path) == [] and not (tmp_path / "raw").exists()  # stopped before any work


@pytest.mark.parametrize("module, override, needles", [
    ("src.train", "train.nope=1", ["Could not override 'train.nope'", "+train.nope=1"]),
    ("src.predict", "model=nope", ["Could not find 'model/nope'", "Available options in 'model': airbench,",
                                 "seed_cnn"]),
    ("src.prepare", "train.foo=1", ["train.foo"]),
])
def test_unknown_key_or_group_option(tmp_path: Path, module: str, override: str, needles: list[str]):
    r = run_cli(module, *_ov(tmp_path), "dataset=demo", override)
    _one_error_line(r, *needles, "(groups and keys are in conf/)")
    assert _outputs(tmp_path) == [] and not (tmp_path / "raw").exists()


def test_a_raw_folder_hydra_cannot_read_gets_its_quoted_form_which_works(tmp_path: Path):
    """A path with characters Hydra's override grammar reserves (~ ( ) , = ' ...), or a value the shell split at its
    spaces: one line with the override quoted for Hydra inside the shell's quotes; pasting that prepares the data."""
    import shlex

    raw = tmp_path / "my data (copy)" / "demo"
    r = run_cli("src.prepare", *_ov(tmp_path), *TINY, f"dataset.raw_dir={raw}")
    line = _one_error_line(r, f"'dataset.raw_dir={raw}': Hydra cannot read this override",
                           f"quote the value in Hydra's grammar, inside the shell's quotes: \"dataset.raw_dir='{raw}'\"")
    assert _outputs(tmp_path) == [] and not raw.exists()
    split = run_cli("src.prepare", *_ov(tmp_path), *TINY, *f"dataset.raw_dir={tmp_path}/my big data".split(" "))
    _one_error_line(split, f"\"dataset.raw_dir='{tmp_path}/my big data'\"")     # the shell's split, joined again
    (pasted,) = shlex.split(line.split("inside the shell's quotes: ")[1].split("  (see README")[0])
    ok = run_cli("src.prepare", *_ov(tmp_path), *TINY, pasted)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (raw / "train").is_dir() and (tmp_path / "processed" / "demo" / "train.npy").is_file()


def test_missing_raw_folder(tmp_path: Path):
    r = run_cli("src.train", *_ov(tmp_path), "dataset=dogs_vs_cats")
    _one_error_line(r, str(tmp_path / "raw" / "dogs_vs_cats"), "not found")
    assert _outputs(tmp_path) == []


def test_empty_test_folder(tmp_path: Path):
    raw = dogs_vs_cats(tmp_path / "raw" / "dogs_vs_cats", n_per_class=3, n_test=2)
    for p in (raw / "test").iterdir():
        p.unlink()
    r = run_cli("src.prepare", *_ov(tmp_path), "dataset=dogs_vs_cats", "prepare.workers=1")
    _one_error_line(r, str(raw / "test"), "no test images")
    assert _outputs(tmp_path) == []


def test_bad_ids_through_the_cli(tmp_path: Path):
    """A user-facing data error: exit 2, one line on stderr starting with 'error:', no traceback, no outputs."""
    raw = small_dogs_vs_cats(tmp_path / "raw")
    (raw / "test" / "2.jpg").unlink()
    r = run_cli("src.prepare", *_ov(tmp_path), "dataset=dogs_vs_cats", f"dataset.raw_dir={raw}", "prepare.workers=1")
    _one_error_line(r, "disagrees with sample_submission.csv", "(e.g. 2)")
    assert _outputs(tmp_path) == []


# ------------------------------------------------------------------ interrupted: 130 and 143
@pytest.mark.parametrize("how, code, line", [
    ("ctrl_c", 130, "interrupted"),
    ("sigterm", 143, "interrupted (SIGTERM)"),
    ("sigint", 130, "interrupted"),
    ("user_error", 2, "error: the message"),
])
def test_exit_codes(how: str, code: int, line: str, capsys):
    from src import cli
    from src.errors import UserError

    def task(cfg):
        if how == "ctrl_c":
            raise KeyboardInterrupt
        if how == "user_error":
            raise UserError("the message")
        os.kill(os.getpid(), signal.SIGTERM if how == "sigterm" else signal.SIGINT)  # unwinds like Ctrl-C
        pytest.fail("the signal did not interrupt the task")

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        cli.run("demo-task", compose(), task)
    assert e.value.code == code
    assert capsys.readouterr().err.strip() == line
    assert signal.getsignal(signal.SIGTERM) is previous  # the handlers are put back
