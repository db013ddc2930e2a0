"""The predict stage (src/predict.py): submissions/<dataset>-<name>.csv as Kaggle accepts it, and its record. The CSV
has the header id,label, every test id once in numeric order (10, 11, 12 after 9, not after 1), each row the
finalized prediction of its own image, within evaluate's clip; unreadable test images get the class prior of the
training labels; a CSV whose ids disagree with the sample submission is refused and nothing is written. The record
(.json) names the model, its sha256, the clip and temperature used and the CSV's sha256. On one tiny trained demo
model (shared, copied), and on a faulty raw folder trained here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import checked, copy_run, demo_overrides, dogs_cfg, model_probs
from imagegen import BAD_TEST, ODD_TRAIN, faulty_dogs_vs_cats
from src import evaluate, pipeline, predict
from src.errors import UserError
from src.files import file_sha256, read_json
from src.submission import SubmissionError

pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def trained(demo_trained: Path, tmp_path_factory) -> Path:
    return copy_run(demo_trained, tmp_path_factory.mktemp("predict"))


def _cfg(base: Path, *extra: str):
    return checked("predict", *demo_overrides(base, *extra))


def test_submission_is_what_kaggle_accepts(trained: Path):
    evaluate.run(_cfg(trained))
    record = predict.run(_cfg(trained))
    csv = trained / "submissions" / "demo-seed_cnn.csv"
    assert Path(record["csv"]) == csv and record["rows"] == 12
    lines = csv.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 13
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    assert ids == list(range(1, 13))  # numeric order: ..., 9, 10, 11, 12
    sample = pd.read_csv(trained / "raw" / "demo" / "sample_submission.csv")
    assert sorted(sample["id"]) == ids
    sub = pd.read_csv(csv)
    metrics = read_json(trained / "metrics" / "demo" / "seed_cnn.json")
    clip = metrics["clip"]
    assert record["clip"] == clip and record["temperature"] == metrics["temperature"] == 1.0
    assert sub["label"].between(clip, 1 - clip).all()
    # each row holds the prediction for its own image (explicit id mapping, no positional slip)
    test, raw_p = model_probs(trained, "test")
    expected = dict(zip(test["id"], np.clip(raw_p, clip, 1 - clip)))
    for i, v in zip(sub["id"], sub["label"]):
        assert v == pytest.approx(expected[i], abs=1e-6), i
    # the record beside it says what made it
    assert read_json(csv.with_suffix(".json")) == record
    assert record["sha256"] == file_sha256(csv) and record["model_sha256"] == metrics["model_sha256"]
    assert record["model_sha256"] == file_sha256(trained / "models" / "demo" / "seed_cnn" / "model.keras")
    assert record["run_id"] is None and record["tracking_uri"] is None and record["tta"] is False
    assert record["val_log_loss"] == metrics["val_log_loss"] and record["predictions"].endswith("predictions/test.csv")


def test_mismatching_sample_submission_is_refused(trained: Path, tmp_path: Path):
    copy_run(trained, tmp_path, ("raw", "processed", "models", "metrics"))
    sample = tmp_path / "raw" / "demo" / "sample_submission.csv"
    sample.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in range(1, 12)))  # id 12 missing
    with pytest.raises(SubmissionError, match="12 rows but sample_submission.csv has 11") as e:
        predict.run(_cfg(tmp_path))
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    sample.write_text("id,label\n" + "".join(f"{i},0.5\n" for i in [*range(1, 12), 13]))  # 13 instead of 12
    with pytest.raises(SubmissionError, match=r"ids differ from sample_submission.csv \(e.g. \[12, 13\]\)"):
        predict.run(_cfg(tmp_path))
    assert not (tmp_path / "submissions").exists()


@pytest.mark.slow
def test_unreadable_test_images_predicted_with_prior(tmp_path: Path, capsys):
    """prepare -> train -> predict on the faulty folder: the CSV has every test id; unreadable ones hold the prior."""
    raw = faulty_dogs_vs_cats(tmp_path / "raw", huge=False)
    cfg = dogs_cfg(tmp_path, raw, "train.epochs=1", "train.batch_size=16", "tracking.enabled=false", stage="train")
    pipeline.run(cfg, "train")
    capsys.readouterr()
    record = pipeline.run(cfg, "predict")
    assert f"{len(BAD_TEST)} unreadable test image(s) predicted with the class prior" in capsys.readouterr().out
    sub = pd.read_csv(record["csv"])
    assert sub["id"].tolist() == list(range(1, 12))
    prior = (6 + len(ODD_TRAIN)) / (10 + 6 + len(ODD_TRAIN))   # P(dog) over the readable training images
    got = sub.set_index("id")["label"]
    for i in BAD_TEST:
        assert got[i] == pytest.approx(prior, abs=1e-12)
    readable = [i for i in range(1, 12) if i not in BAD_TEST]
    assert not np.allclose(got[readable].to_numpy(), prior, atol=1e-6)  # the readable ones hold the model's own
    assert sub["label"].between(record["clip"], 1 - record["clip"]).all()
