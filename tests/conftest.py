"""Shared fixtures: every test writes under its own tmp folder (never into the project's data/ or mlflow.db)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# A tiny demo run: 48x48 images (the seed CNN's minimum is 46), a few dozen images, one epoch.
TINY = ["dataset=demo", "dataset.image_size=48", "dataset.demo.n_train_per_class=24", "dataset.demo.n_test=12",
        "train.epochs=1", "train.batch_size=16", "prepare.workers=1"]


def path_overrides(base: Path) -> list[str]:
    """Point every output (and the MLflow store) into base."""
    return [f"paths.raw={base}/raw", f"paths.processed={base}/processed", f"paths.models={base}/models",
            f"paths.metrics={base}/metrics", f"paths.plots={base}/plots", f"paths.submissions={base}/submissions",
            f"tracking.uri=sqlite:///{base}/mlflow.db"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def overrides(tmp_path: Path) -> list[str]:
    return path_overrides(tmp_path)


def compose(*overrides: str):
    from src.common import compose as _compose

    return _compose(list(overrides))


def run_cli(module: str, *overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> overrides...` from the project root, as a user would."""
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=ROOT, capture_output=True, text=True,
                          env=e, timeout=timeout)
