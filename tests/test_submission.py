"""What is submitted (src/submission.py) and how it is scored and calibrated (src/metrics.py, src/calibration.py),
without a model. build maps each prediction to its id and sorts ids as numbers; validate refuses whatever Kaggle
would reject or score wrongly (columns, duplicate, non-integer or unordered ids, probabilities outside the clip or
not finite, unknown class names, ids that differ from the sample submission); write reads back bit for bit. A
property test throws arbitrary ids and values at build/validate/write. finalize is temperature -> class prior for
unreadable images -> clip, checked against the same steps computed here; Kaggle's log loss equals sklearn's; the
temperature and the clip chosen on labelled probabilities are the best ones. No TensorFlow here.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from omegaconf import OmegaConf

from src.calibration import choose_clip, choose_temperature, fit
from src.errors import UserError
from src.metrics import accuracy, kaggle_log_loss, per_class_accuracy, roc_auc
from src.submission import (SubmissionError, apply_temperature, build, class_prior, clip_probabilities, finalize,
                            validate, write)

sklearn_metrics = pytest.importorskip("sklearn.metrics")


# ------------------------------------------------------------------ build, validate, write
def test_build_maps_each_prediction_to_its_id_in_numeric_order():
    ids = np.array([10, 2, 1, 11, 9])
    p = np.array([0.10, 0.02, 0.01, 0.11, 0.09])
    df = build(ids, p, ["cat", "dog"], "probability")
    assert df["id"].tolist() == [1, 2, 9, 10, 11]
    np.testing.assert_allclose(df["label"], [0.01, 0.02, 0.09, 0.10, 0.11])
    df = build(ids, np.stack([1 - p, p], axis=1), ["cat", "dog"], "probability")  # rows of two: P(classes[1])
    np.testing.assert_allclose(df["label"], [0.01, 0.02, 0.09, 0.10, 0.11])
    df = build(ids, np.eye(3)[[2, 0, 1, 1, 0]], ["a", "b", "c"], "class_name")
    assert df["label"].tolist() == ["b", "a", "a", "c", "b"]  # ids 1, 2, 9, 10, 11


@pytest.mark.parametrize("ids, probs, classes, kind, why", [
    ([1, 2, 3], [0.5, 0.5], ["cat", "dog"], "probability", "3 ids but 2 predictions"),
    ([1, 2], [[0.5, 0.5], [np.nan, 0.2]], ["a", "b"], "class_name", "id 2: predicted probabilities"),
    ([1, 2], [0.5, 0.5], ["a", "b"], "class_name", "one probability per class"),
    ([1, 2], [0.5, 0.5], ["a", "b"], "rank", "unknown submission format 'rank'"),
])
def test_build_refuses_what_cannot_pair_up(ids, probs, classes, kind, why):
    with pytest.raises(SubmissionError, match=why) as e:
        build(np.array(ids), np.array(probs), classes, kind)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)


@pytest.mark.parametrize("df, kind, why", [
    (pd.DataFrame({"id": [1, 2], "p": [0.5, 0.5]}), "probability", "columns"),
    (pd.DataFrame({"id": [1, 1], "label": [0.5, 0.5]}), "probability", "more than once"),
    (pd.DataFrame({"id": [1, 10, 2], "label": [0.5, 0.5, 0.5]}), "probability", "numeric order"),
    (pd.DataFrame({"id": ["1", "2.5"], "label": [0.5, 0.5]}), "probability", "not an integer"),
    (pd.DataFrame({"id": [1, 2], "label": [0.5, 0.001]}), "probability", "outside"),
    (pd.DataFrame({"id": [1, 2], "label": [0.5, np.nan]}), "probability", "finite"),
    (pd.DataFrame({"id": [1, 2], "label": ["cat", "wolf"]}), "class_name", "not a class name"),
    (pd.DataFrame({"id": [], "label": []}), "probability", "no rows"),
])
def test_validate_refuses_what_kaggle_would_reject(df, kind, why):
    with pytest.raises(SubmissionError, match=why):
        validate(df, kind, ["cat", "dog"], clip=0.005)


def test_validate_checks_ids_against_the_sample(tmp_path: Path):
    df = pd.DataFrame({"id": [1, 2, 3], "label": [0.5, 0.5, 0.5]})
    (tmp_path / "ok.csv").write_text("id,label\n3,0.5\n1,0.5\n2,0.5\n")
    validate(df, "probability", ["cat", "dog"], sample=tmp_path / "ok.csv")
    (tmp_path / "more.csv").write_text("id,label\n1,0.5\n2,0.5\n3,0.5\n4,0.5\n")
    with pytest.raises(SubmissionError, match="3 rows but more.csv has 4"):
        validate(df, "probability", ["cat", "dog"], sample=tmp_path / "more.csv")
    (tmp_path / "other.csv").write_text("id,label\n1,0.5\n2,0.5\n4,0.5\n")
    with pytest.raises(SubmissionError, match=r"ids differ from other.csv \(e.g. \[3, 4\]\)"):
        validate(df, "probability", ["cat", "dog"], sample=tmp_path / "other.csv")


def test_written_csv_reads_back_exactly(tmp_path: Path):
    p = np.random.default_rng(0).uniform(0.005, 0.995, 12)
    df = build(np.arange(12, 0, -1), p, ["cat", "dog"], "probability")
    back = pd.read_csv(write(df, tmp_path / "s.csv"))
    assert back["id"].tolist() == list(range(1, 13))
    np.testing.assert_array_equal(back["label"].to_numpy(), p[::-1])
    assert os.listdir(tmp_path) == ["s.csv"]  # written atomically: no temporary left


# ------------------------------------------------------------------ the writer, property-based
_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
_prob = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0, -0.0, 5e-324, 1 - 2**-53, 0.1, 1 / 3]))


@st.composite
def _submission_case(draw):
    kind = draw(st.sampled_from(["probability", "class_name"]))
    n = draw(st.integers(0, 25))
    unique = draw(st.booleans()) or n == 0
    ids = draw(st.lists(st.integers(-3, 10**12), min_size=n, max_size=n, unique=unique))
    values = st.one_of(_prob, _any_float) if draw(st.integers(0, 3)) == 0 else _prob  # mostly valid probabilities
    if kind == "probability":
        classes = ["cat", "dog"]
        cols = draw(st.sampled_from([None, 2]))
    else:
        k = draw(st.integers(2, 5))
        name = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=8)
        classes = draw(st.lists(name, min_size=k, max_size=k, unique=True))
        cols = k
    rows = n + draw(st.sampled_from([0] * 8 + [1, -1])) if n else n   # now and then one prediction too many/few
    shape = (max(rows, 0),) if cols is None else (max(rows, 0), cols)
    probs = np.array(draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                     dtype=np.float64).reshape(shape)
    clip = draw(st.sampled_from([None, None, 1e-15, 0.005]))
    return kind, ids, probs, classes, clip


def _bits(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).view(np.int64)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_submission_case())
def test_submission_writer_round_trips_or_refuses(case):
    kind, ids, probs, classes, clip = case
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "submission.csv"
        try:
            df = build(ids, probs, classes, kind)
            validate(df, kind, classes, clip=clip)
        except SubmissionError as e:
            assert "\n" not in str(e)
            assert not path.exists()
            return
        write(df, path)
        assert sorted(os.listdir(d)) == ["submission.csv"]

        # what a valid file must be, checked independently of validate()
        assert len(set(ids)) == len(ids) > 0 and len(probs) == len(ids)
        back = pd.read_csv(path, dtype={"label": str} if kind == "class_name" else None, keep_default_na=False)
        assert list(back.columns) == ["id", "label"]
        assert back["id"].tolist() == sorted(ids)                        # every id once, numeric order
        order = np.argsort(np.asarray(ids), kind="stable")
        if kind == "probability":
            p = probs if probs.ndim == 1 else probs[:, 1]
            expected = p[order]
            assert np.all(np.isfinite(expected)) and np.all((expected >= 0) & (expected <= 1))
            assert np.array_equal(_bits(back["label"].to_numpy()), _bits(expected))   # bit for bit, each at its id
        else:
            assert np.all(np.isfinite(probs))                             # a NaN row never becomes a class name
            expected = [classes[i] for i in probs.argmax(axis=1)[order]]
            assert back["label"].tolist() == expected
        validate(back, kind, classes, clip=clip)                          # the file on disk passes the same checks


# ------------------------------------------------------------------ finalize: temperature -> prior -> clip
def _sigmoid_temperature(p: np.ndarray, t: float) -> np.ndarray:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return 1 / (1 + np.exp(-np.log(q / (1 - q)) / t))


def _softmax_temperature(p: np.ndarray, t: float) -> np.ndarray:
    z = np.exp(np.log(np.clip(p, 1e-15, 1)) / t)
    return z / z.sum(axis=1, keepdims=True)


def test_finalize_is_temperature_then_prior_then_clip_two_classes():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 40)
    p[:4] = [0.0, 1.0, 0.995, 0.001]
    unreadable = np.zeros(40, dtype=bool)
    unreadable[[5, 17, 30]] = True
    labels = np.array([0] * 999 + [1])          # P(class 1) = 0.001: below the clip, so the clip must apply to it
    prior = class_prior(labels, 2)
    np.testing.assert_allclose(prior, [0.999, 0.001])
    t, clip = 2.5, 0.01
    got = finalize(p, t, clip, prior, unreadable)

    expected = _sigmoid_temperature(p, t)       # 1. the temperature, on the model's probabilities only
    expected[unreadable] = prior[1]             # 2. the prior, as it is (not tempered)
    expected = np.clip(expected, clip, 1 - clip)  # 3. the clip, on everything
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert (got[unreadable] == clip).all()
    # the order matters: the prior tempered, or the clip before the temperature, give other numbers
    tempered_prior = _sigmoid_temperature(np.where(unreadable, prior[1], p), t)
    assert not np.allclose(got, np.clip(tempered_prior, clip, 1 - clip))
    assert not np.allclose(got, np.where(unreadable, clip, _sigmoid_temperature(np.clip(p, clip, 1 - clip), t)))
    np.testing.assert_array_equal(finalize(p, 1.0, clip), np.clip(p, clip, 1 - clip))  # T = 1, no prior: clip only


def test_finalize_is_temperature_then_prior_then_clip_several_classes():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.full(4, 0.3), 30)
    unreadable = np.zeros(30, dtype=bool)
    unreadable[[0, 9]] = True
    prior = class_prior(np.array([0] * 60 + [1] * 30 + [2] * 9 + [3]), 4)
    np.testing.assert_allclose(prior, [0.6, 0.3, 0.09, 0.01])
    t, clip = 0.7, 0.02
    got = finalize(p, t, clip, prior, unreadable)

    expected = _softmax_temperature(p, t)
    expected[unreadable] = prior
    expected = np.clip(expected, clip, 1 - clip)
    expected /= expected.sum(axis=1, keepdims=True)  # as Kaggle's scorer renormalises clipped rows
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)
    assert not np.allclose(got[0], prior / prior.sum())  # the prior's 0.01 was clipped up before renormalising
    np.testing.assert_allclose(got[0], got[9])  # both unreadable rows hold the same (clipped) prior


# ------------------------------------------------------------------ metrics and calibration
def test_log_loss_and_clip_helpers_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 50)
    p = rng.uniform(0, 1, 50)
    p[:3] = [0.0, 1.0, 1e-9]
    for c in (1e-15, 0.005, 0.05):
        q = clip_probabilities(p, c)
        assert q.min() >= c and q.max() <= 1 - c
        assert kaggle_log_loss(y, q) == pytest.approx(sklearn_metrics.log_loss(y, q, labels=[0, 1]))
    assert kaggle_log_loss(y, p) == pytest.approx(
        sklearn_metrics.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))  # 0 and 1 cost 34.5, not inf
    ym = rng.integers(0, 4, 40)
    pm = rng.dirichlet(np.ones(4), 40)
    q = clip_probabilities(pm, 0.01)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)
    assert kaggle_log_loss(ym, q) == pytest.approx(sklearn_metrics.log_loss(ym, q, labels=[0, 1, 2, 3]))
    assert kaggle_log_loss(ym, pm) == pytest.approx(sklearn_metrics.log_loss(ym, pm, labels=[0, 1, 2, 3]))
    best = choose_clip(y, p, [1e-15, 0.01, 0.1, 0.3])
    losses = {c: kaggle_log_loss(y, clip_probabilities(p, c)) for c in [1e-15, 0.01, 0.1, 0.3]}
    assert losses[best] == min(losses.values())


def test_accuracy_auc_and_per_class_accuracy():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.2, 0.7, 0.4, 0.5, 0.9])
    assert accuracy(y, p) == pytest.approx(0.6)  # 0.5 counts as class 1
    assert roc_auc(y, p) == pytest.approx(sklearn_metrics.roc_auc_score(y, p))
    assert roc_auc(np.ones(5, dtype=int), p) is None  # one class only: no AUC
    ym = np.array([0, 1, 2, 2])
    pm = np.eye(3)[[0, 2, 2, 1]]
    per_class, cm = per_class_accuracy(ym, pm, ["a", "b", "c"])
    assert per_class == {"a": 1.0, "b": 0.0, "c": 0.5}
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 1], [0, 1, 1]])
    assert per_class_accuracy(np.array([0, 0]), np.eye(3)[[0, 1]], ["a", "b", "c"])[0]["c"] is None


def test_temperature_helpers():
    p = np.array([0.9, 0.2, 0.6])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p)
    np.testing.assert_allclose(apply_temperature(p, 2.0), 1 / (1 + np.exp(-np.log(p / (1 - p)) / 2)))
    rows = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    soft = apply_temperature(rows, 3.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    np.testing.assert_allclose(soft, np.exp(np.log(rows) / 3) / np.exp(np.log(rows) / 3).sum(axis=1, keepdims=True))
    rng = np.random.default_rng(0)  # an over-confident model: the right temperature is > 1
    y = rng.integers(0, 2, 2000)
    logit = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.5, 2000)
    overconfident = 1 / (1 + np.exp(-3 * logit))
    t = choose_temperature(y, overconfident)
    assert 2.0 < t < 4.5
    assert kaggle_log_loss(y, apply_temperature(overconfident, t)) < kaggle_log_loss(y, overconfident) - 0.1
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 300))
    assert kaggle_log_loss(y, apply_temperature(overconfident, t)) <= min(
        kaggle_log_loss(y, apply_temperature(overconfident, g)) for g in grid) + 1e-4
    calibrated = 1 / (1 + np.exp(-logit))  # already calibrated: no temperature does better, so 1.0
    assert choose_temperature(y, calibrated) == pytest.approx(1.0, abs=0.1)


def test_fit_follows_the_evaluate_settings():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = 1 / (1 + np.exp(-3 * (np.where(y == 1, 1.0, -1.0) + rng.normal(0, 1.5, 500))))
    candidates = [1e-15, 0.001, 0.01, 0.05]

    def settings(temperature, clip):
        return OmegaConf.create({"temperature": temperature, "clip": clip, "clip_candidates": candidates})

    fixed = fit(settings(1.0, 0.02), y, p)
    assert (fixed.temperature, fixed.clip) == (1.0, 0.02)
    auto = fit(settings("auto", "auto"), y, p)
    assert auto.temperature == choose_temperature(y, p) and auto.temperature > 1.5
    assert auto.clip == choose_clip(y, apply_temperature(p, auto.temperature), candidates)  # chosen after the temperature
    assert auto.as_dict() == {"temperature": auto.temperature, "clip": auto.clip}
    assert fit(settings(2.0, "auto"), y, p).clip == choose_clip(y, apply_temperature(p, 2.0), candidates)
