"""The benchmark scripts (benchmarks/): each starts (--help), every name it imports from src still exists, and
their shared helpers work. The benchmarks themselves are run by hand (benchmarks/README.md), not in the suite."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["input_pipeline.py", "prepare.py", "predict.py", "gpu_train.py", "time_to_accuracy.py", "backbones.py",
           "full_size.py", "cv_blend.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_scripts_start(script):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout


def test_gpu_train_dry_run_measures_every_path(tmp_path):
    """The GPU benchmark on tiny generated data, on the CPU (seconds): prepare, both models, two policies, the
    no-rotation rerun, its JSON rows in the format results/gpu_train-<gpu>.json keeps, and the table last."""
    import json

    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--dry-run", "--out", str(out),
                        "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(x["model"], x["policy"]) for x in rows] == [
        ("seed_cnn", "float32"), ("seed_cnn", "mixed_bfloat16"), ("resnet_cifar", "float32"),
        ("resnet_cifar", "mixed_bfloat16"), ("seed_cnn", "float32"), ("seed_cnn", "mixed_float16")][:len(rows)]
    assert len(rows) >= 5
    for x in rows:
        assert {"model", "policy", "batch", "pipeline_img_s", "ceiling_img_s", "pipeline_vs_ceiling", "compile_s"} <= set(x)
        assert x["pipeline_img_s"] > 0 and x["ceiling_img_s"] > 0 and x["compile_s"] >= 0
    assert "rotation=0.05" in rows[0]["augment"] and "rotation=0" in rows[4]["augment"]
    assert r.stdout.strip().splitlines()[-1].startswith("| seed_cnn |")  # the table comes last
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--dry-run", "--budget", "0",
                        "--out", str(tmp_path / "none.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "the 0s budget would be overrun" in r.stdout, r.stdout[-2000:]
    assert json.loads((tmp_path / "none.json").read_text())["results"] == []  # stopped cleanly, JSON written


def test_cv_blend_stops_at_its_budget_and_keeps_its_json(tmp_path):
    """The GPU blend script with a budget too short for one member: its first training is stopped (SIGINT), no
    later member starts, nothing is blended, and the JSON and the table say so. (Its whole dry run, two members
    trained, evaluated and blended on generated photos, takes ~3 min: benchmarks/README.md, run by hand.)"""
    import json

    out = tmp_path / "cv.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cv_blend.py"), "--dry-run", "--budget", "1",
                        "--work", str(tmp_path / "work"), "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["members"]) == ["xception_mini_cv_long"], result["members"]
    assert result["members"]["xception_mini_cv_long"]["finished"] is False and result["blend"] is None
    assert "budget reached" in r.stdout and "| xception_mini_cv_long | False |" in r.stdout


def test_cv_blend_trains_the_members_the_blend_config_names():
    """cv_blend.py's training commands are the recipe's own: each composes to the member name it is filed under,
    in conf/blend/dogs_vs_cats.yaml's order (the strongest first)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import cv_blend

    from src.config import compose

    assert list(cv_blend.MEMBERS) == list(compose(cv_blend.BLEND).blend.members)
    for name, overrides in cv_blend.MEMBERS.items():
        assert compose(overrides).name == name


def test_benchutil_table_and_memory():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import benchutil as bu

    text = bu.table([{"a": "x", "b": 1234.5}, {"a": "y", "b": 1.234}], [("a", "A"), ("b", "B")])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| x | 1,234 |", "| y | 1.23 |"]
    assert bu.peak_rss_mb() >= bu.rss_mb() * 0.5 > 0
    failures: list[str] = []
    assert bu.check(False, "thing", failures).startswith("FAIL") and failures == ["thing"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_scripts_use_the_current_src_api(script):
    """Every `from src... import name` in a benchmark (most sit inside functions) names something src still has."""
    import ast
    import importlib

    tree = ast.parse((ROOT / "benchmarks" / script).read_text())
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module and node.module.split(".")[0] == "src" for alias in node.names]
    assert imported, "the benchmark no longer uses the project"
    missing = [f"{module}.{name}" for module, name in imported
               if not hasattr(importlib.import_module(module), name)
               and importlib.util.find_spec(f"{module}.{name}") is None]
    assert missing == []
