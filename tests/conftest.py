"""Shared helpers and fixtures: every test writes under its own tmp folder (never into the project's data/ or
mlflow.db)."""
from __future__ import annotations

import os
import shutil
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
    """Point every output (and the MLflow store) into base. Evaluate's MLflow Model logging (a copy of the model
    and of src/, and a load to check its example: ~1 s) is off; the tests of it turn it on."""
    return [f"paths.raw={base}/raw", f"paths.processed={base}/processed", f"paths.models={base}/models",
            f"paths.metrics={base}/metrics", f"paths.plots={base}/plots", f"paths.predictions={base}/predictions",
            f"paths.submissions={base}/submissions", f"paths.features={base}/features",
            f"tracking.uri=sqlite:///{base}/mlflow.db", "tracking.log_model=false"]


def compose(*overrides: str):
    from src.config import compose as _compose

    return _compose(list(overrides))


def checked(stage: str | None, *overrides: str):
    """The composed config, checked as the command line checks it for `stage` (src.config.check)."""
    from src.config import check

    cfg = compose(*overrides)
    check(cfg, stage)
    return cfg


def run_cli(module: str, *overrides: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m <module> overrides...` from the project root, as a user would."""
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *overrides], cwd=ROOT, capture_output=True, text=True,
                          env=e, timeout=timeout)


def dogs_cfg(base: Path, raw: Path, *extra: str, stage: str = "prepare"):
    """Dogs vs Cats at 48x48 from the raw folder `raw`, outputs under base, checked for `stage`."""
    return checked(stage, *path_overrides(base), "dataset=dogs_vs_cats", f"dataset.raw_dir={raw}",
                   "dataset.image_size=48", "prepare.workers=1", "prepare.preview=false", *extra)


def cifar_cfg(base: Path, raw: Path, *extra: str, stage: str = "prepare"):
    """CIFAR-10 from the raw folder `raw`, outputs under base, checked for `stage`."""
    return checked(stage, *path_overrides(base), "dataset=cifar10", f"dataset.raw_dir={raw}", "prepare.workers=1",
                   "prepare.preview=false", *extra)


# ------------------------------------------------------------------ an MLflow store
@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    """An empty store at MLflow's current schema, made once: creating one runs every migration (~10 s here)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, template: Path) -> Path:
    """The test's tmp_path with a copy of the empty store as tmp_path/mlflow.db (where path_overrides points
    tracking.uri)."""
    shutil.copyfile(template, tmp_path / "mlflow.db")
    return tmp_path


# ------------------------------------------------------------------ one tiny trained demo model, shared
def demo_overrides(base: Path, *extra: str) -> list[str]:
    """The tiny demo run with every output under base and tracking off (what demo_trained was made with)."""
    return [*TINY, *path_overrides(base), "tracking.enabled=false", *extra]


@pytest.fixture(scope="session")
def demo_trained(tmp_path_factory) -> Path:
    """The tiny demo prepared and a seed CNN trained on it (one epoch, tracking off; its prediction files written
    by train), made once. Read only: a module that changes anything works on its own copy (copy_run)."""
    from src import pipeline

    base = tmp_path_factory.mktemp("demo_trained")
    pipeline.run(checked("train", *demo_overrides(base)), "train")
    return base


def copy_run(src: Path, dst: Path, parts: tuple[str, ...] = ("raw", "processed", "models")) -> Path:
    """Copy the given output folders of a run (times kept, so prepare's fingerprint still matches)."""
    for part in parts:
        if (src / part).exists():
            shutil.copytree(src / part, dst / part)
    return dst


def model_probs(base: Path, split: str, flip: bool = False, model_file: Path | None = None):
    """The demo manifest of a split ("val" or "test") and the trained model's raw P(dog) for its rows, in manifest
    order, computed here independently of src.inference (flip: of the mirrored images)."""
    import keras
    import numpy as np
    import pandas as pd

    import src.models  # noqa: F401  (registers the custom layers: the model loads without custom_objects)

    proc = base / "processed" / "demo"
    model = keras.saving.load_model(model_file or base / "models" / "demo" / "seed_cnn" / "model.keras")
    if split == "val":
        df = pd.read_csv(proc / "train.csv", dtype={"id": str}).query("fold == 'val'").reset_index(drop=True)
        arr = np.load(proc / "train.npy")
    else:
        df = pd.read_csv(proc / "test.csv")
        arr = np.load(proc / "test.npy")
    x = arr[df["index"].to_numpy()]
    if flip:
        x = x[:, :, ::-1]
    return df, model.predict(x, verbose=0)[:, 0].astype(np.float64)


# ------------------------------------------------------------------ backbone weights the tests write
def write_notop_weights(path: Path, backbone: str = "MobileNet", size: int = 32, seed: int = 0, alpha=None) -> Path:
    """A no-top weights file of a keras.applications network, as Keras' *_notop.h5 files are (ImageNet's cannot
    be downloaded here): seeded random weights, with every batch norm's moving statistics set from one batch of
    random images, so the network's features carry signal in inference mode (a fresh network's unit statistics
    would shrink them to nothing)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    extra = {} if alpha is None else {"alpha": alpha}
    net = getattr(keras.applications, backbone)(include_top=False, weights=None, input_shape=(size, size, 3),
                                                pooling="avg", **extra)
    norms = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    net(np.random.default_rng(seed).uniform(-1, 1, (16, size, size, 3)).astype("float32"), training=True)
    net.save_weights(path)
    return path
