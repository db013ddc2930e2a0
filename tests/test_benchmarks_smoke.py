"""The benchmark scripts (benchmarks/) start and their shared helpers work; the benchmarks themselves are
run by hand (benchmarks/README.md), not in the test suite."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["input_pipeline.py", "prepare.py", "predict.py"]


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
