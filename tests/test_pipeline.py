"""The stage order (src/pipeline.py): what `python -m src.<stage>` runs before the stage itself. prepare and evaluate
are brought up to date when they are missing or stale; train never is (a missing model is one line naming the train
command); a current stage is not rerun, and a model that is there is used as it is (a retrained one makes evaluate
run again). Inside a DVC stage (DVC_STAGE set) nothing upstream is run, stale or not: a missing input is one line
naming `dvc repro <stage>`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import TINY, checked, copy_run, demo_overrides, path_overrides, run_cli
from src import evaluate, pipeline, prepare, train
from src.errors import UserError
from src.files import read_json
from src.paths import Layout


def _cfg(base: Path, stage: str = "predict", *extra: str):
    return checked(stage, *demo_overrides(base, *extra))


def _mtimes(*folders: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for d in folders if d.exists() for p in d.rglob("*") if p.is_file()}


def test_stage_order():
    assert pipeline.ORDER == ("prepare", "train", "evaluate", "predict")


def test_predict_on_fresh_data_prepares_but_refuses_to_train(tmp_path: Path):
    r = run_cli("src.predict", *TINY, *path_overrides(tmp_path), "tracking.enabled=false",
                f"hydra.run.dir={tmp_path}/hydra", env={"DVC_STAGE": ""})
    assert r.returncode == 2, r.stderr
    assert "predict: the prepare stage's outputs are missing or out of date; running prepare first" in r.stdout
    model = tmp_path / "models" / "demo" / "seed_cnn" / "model.keras"
    assert r.stderr.strip() == f"error: {model} not found; train it first: python -m src.train dataset=demo name=seed_cnn"
    assert "Traceback" not in r.stderr + r.stdout
    assert (tmp_path / "processed" / "demo" / "train.npy").is_file()           # prepare ran
    for never in ("models", "metrics", "submissions"):                           # train (and so the rest) did not
        assert not (tmp_path / never).exists(), never


def test_predict_runs_evaluate_first_and_then_nothing_twice(demo_trained: Path, tmp_path: Path, capsys):
    copy_run(demo_trained, tmp_path)   # prepared and trained, never evaluated
    cfg = _cfg(tmp_path)
    lay = Layout(cfg)
    upstream = _mtimes(lay.processed, lay.model_dir)
    capsys.readouterr()
    record = pipeline.run(cfg, "predict")
    out = capsys.readouterr().out
    assert "predict: the evaluate stage's outputs are missing or out of date; running evaluate first" in out
    assert "running prepare first" not in out and "inference:" not in out     # current: not rerun
    assert lay.metrics.is_file() and lay.submission.is_file() and record["rows"] == 12
    assert _mtimes(lay.processed, lay.model_dir) == upstream                   # nothing upstream was rewritten
    # everything current now: predict alone
    metrics = lay.metrics.stat().st_mtime_ns
    pipeline.run(cfg, "predict")
    assert "first" not in capsys.readouterr().out and lay.metrics.stat().st_mtime_ns == metrics
    pipeline.run(_cfg(tmp_path, "evaluate"), "evaluate")                       # evaluate asked for: it runs
    assert "first" not in capsys.readouterr().out and lay.metrics.stat().st_mtime_ns > metrics
    # a stale stage is rerun: new evaluate settings, then a changed raw file for prepare
    assert pipeline.run(_cfg(tmp_path, "predict", "evaluate.clip=0.02"), "predict")["clip"] == 0.02
    assert "running evaluate first" in capsys.readouterr().out and read_json(lay.metrics)["clip"] == 0.02
    raw_file = lay.raw_test / "3.jpg"
    os.utime(raw_file, ns=(raw_file.stat().st_atime_ns, raw_file.stat().st_mtime_ns + 10**9))
    assert not prepare.is_current(cfg)
    capsys.readouterr()
    pipeline.run(_cfg(tmp_path, "evaluate"), "evaluate")
    out = capsys.readouterr().out
    assert "evaluate: the prepare stage's outputs are missing or out of date; running prepare first" in out
    assert prepare.is_current(cfg) and lay.model.stat().st_mtime_ns == upstream[str(lay.model)]  # train: never


def test_a_retrained_model_is_evaluated_again(demo_trained: Path, tmp_path: Path, capsys):
    """Tracking off (no run ids): metrics left by an earlier model must not lend their clip to a new one."""
    copy_run(demo_trained, tmp_path)
    assert evaluate.run(_cfg(tmp_path, "evaluate", "evaluate.clip=0.49"))["clip"] == 0.49
    train.run(_cfg(tmp_path, "train", "seed=7"))  # a new model under the same name
    assert not evaluate.is_current(_cfg(tmp_path, "evaluate", "evaluate.clip=0.49"))
    capsys.readouterr()
    record = pipeline.run(_cfg(tmp_path), "predict")
    assert "running evaluate first" in capsys.readouterr().out
    assert record["clip"] in list(_cfg(tmp_path).evaluate.clip_candidates)


# ------------------------------------------------------------------ inside DVC: check, never run
@pytest.mark.parametrize("present, missing", [
    ((), "prepare"),
    (("raw", "processed"), "train"),
    (("raw", "processed", "models"), "evaluate"),
])
def test_inside_dvc_a_missing_input_names_the_dvc_stage(demo_trained: Path, tmp_path: Path, monkeypatch, present,
                                                       missing: str):
    copy_run(demo_trained, tmp_path, present)
    monkeypatch.setenv("DVC_STAGE", "predict")
    before = _mtimes(tmp_path)
    with pytest.raises(UserError) as e:
        pipeline.run(_cfg(tmp_path), "predict")
    assert str(e.value) == f"the {missing} stage's outputs are missing; run it first: dvc repro {missing}"
    assert _mtimes(tmp_path) == before                                         # nothing was run or written


def test_inside_dvc_stale_stages_are_not_rerun(demo_trained: Path, tmp_path: Path, monkeypatch, capsys):
    copy_run(demo_trained, tmp_path)
    cfg = _cfg(tmp_path)
    lay = Layout(cfg)
    evaluate.run(_cfg(tmp_path, "evaluate"))
    raw_file = lay.raw_test / "3.jpg"
    os.utime(raw_file, ns=(raw_file.stat().st_atime_ns, raw_file.stat().st_mtime_ns + 10**9))
    stale = _cfg(tmp_path, "predict", "evaluate.clip=0.02")
    assert not prepare.is_current(stale) and not evaluate.is_current(stale)   # both stale outside DVC's view
    before = _mtimes(lay.processed, lay.model_dir, lay.metrics.parent)
    monkeypatch.setenv("DVC_STAGE", "predict")
    capsys.readouterr()
    record = pipeline.run(stale, "predict")
    assert "first" not in capsys.readouterr().out
    assert _mtimes(lay.processed, lay.model_dir, lay.metrics.parent) == before  # DVC decides what is stale
    assert record["clip"] == read_json(lay.metrics)["clip"]                     # evaluate's recorded clip is used
    assert read_json(lay.metrics)["settings"].startswith("clip=auto")


def test_inside_dvc_the_command_line_says_which_stage_to_run(tmp_path: Path):
    r = run_cli("src.evaluate", *TINY, *path_overrides(tmp_path), f"hydra.run.dir={tmp_path}/hydra",
                env={"DVC_STAGE": "evaluate"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: the prepare stage's outputs are missing; run it first: dvc repro prepare"
    assert not [p for p in tmp_path.iterdir() if p.name != "hydra"]            # nothing generated or prepared
