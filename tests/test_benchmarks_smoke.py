"""The benchmark scripts (benchmarks/): each starts (--help), every name it imports from src still exists, and
their shared helpers work. The benchmarks themselves are run by hand (benchmarks/README.md), not in the suite."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["input_pipeline.py", "prepare.py", "predict.py", "gpu_train.py", "time_to_accuracy.py", "full_size.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_scripts_start(script):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout


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
