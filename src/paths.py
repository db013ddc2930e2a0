"""Every path a run reads or writes (the project's catalog), derived from the config alone.

Paths in the config are relative to the project root, never to the working directory or Hydra's run folder,
so a run from any directory, a sweep job and a DVC stage all read and write the same places.
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


def project_path(p: str | os.PathLike) -> Path:
    """A configured path resolved against the project root (absolute paths are kept, ~ is expanded)."""
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else PROJECT_ROOT / p


def shown_path(p: Path) -> str:
    """A path as recorded inside outputs: relative to the project root when inside it, so clones agree."""
    try:
        return p.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(p)


def run_name(cfg: DictConfig) -> str:
    """The run's name (`name`); each job of a Hydra sweep (-m) gets its job number appended, so that jobs
    never share outputs."""
    name = str(cfg.name)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # no Hydra run (tests and notebooks compose the config themselves)
        return name
    return f"{name}-{hc.job.num}" if hc.mode == RunMode.MULTIRUN else name


class Layout:
    """Where each stage reads and writes. Stages take every path from here; none builds one itself.

    With cross-validation (cv.folds=k) a name is one member of k fold models: fold i trains into
    models/<dataset>/<name>/fold-<i>/ (cv.fold=i), and evaluate joins them into predictions/<dataset>/<name>/.
    """

    def __init__(self, cfg: DictConfig):
        ds, name = str(cfg.dataset.name), run_name(cfg)
        self.dataset, self.name = ds, name
        cv = cfg.get("cv") or {}
        self.folds, self.fold = cv.get("folds"), cv.get("fold")
        fold_dir = f"fold-{self.fold}" if self.folds and self.fold is not None else None
        self._raw(cfg)
        self._prepared(project_path(cfg.paths.processed) / ds)
        self.features = project_path(cfg.paths.features) / ds  # frozen-feature embeddings, one folder per key
        self._trained(project_path(cfg.paths.models) / ds / name, fold_dir)
        self._evaluated(cfg, fold_dir)
        self._searched(cfg)
        # predict: submissions/<dataset>-<name>.csv and its record
        self.submissions = project_path(cfg.paths.submissions)
        self.submission = self.submissions / f"{ds}-{name}.csv"
        self.submission_record = self.submission.with_suffix(".json")

    def _raw(self, cfg: DictConfig) -> None:
        """The raw Kaggle files (read only; data/raw/<dataset>/ unless dataset.raw_dir says otherwise)."""
        self.raw = project_path(cfg.dataset.raw_dir)
        self.raw_train, self.raw_test = self.raw / "train", self.raw / "test"
        self.sample_submission = self.raw / str(cfg.dataset.sample_submission)
        self.labels_csv = self.raw / str(cfg.dataset.labels_csv) if cfg.dataset.get("labels_csv") else None
        self.download_state = self.raw / ".kagglepipe-download.json"

    def _prepared(self, processed: Path) -> None:
        """prepare: data/processed/<dataset>/."""
        self.processed = processed
        self.train_images, self.test_images = processed / "train.npy", processed / "test.npy"
        self.train_manifest, self.test_manifest = processed / "train.csv", processed / "test.csv"
        self.classes = processed / "classes.json"
        self.report = processed / "report.json"
        self.preview = processed / "preview.png"
        self.image_files = processed / "images"
        self.prepare_state = processed / "state.json"  # machine-specific: .dvcignore keeps it out of DVC
        self.prepare_lock = processed.parent / f".{processed.name}.prepare.lock"  # beside it: outside DVC's output

    def _trained(self, member_dir: Path, fold_dir: str | None) -> None:
        """train: models/<dataset>/<name>/ (a fold: models/<dataset>/<name>/fold-<i>/)."""
        self.member_dir = member_dir
        self.member_record = member_dir / "member.json"  # cross-validation: folds, MLflow run, train command
        self.model_dir = member_dir / fold_dir if fold_dir else member_dir
        self.model = self.model_dir / "model.keras"
        self.run_info = self.model_dir / "run.json"
        self.history = self.model_dir / "history.json"
        self.config_yaml = self.model_dir / "config.yaml"
        self.checkpoint_dir = self.model_dir / "checkpoint"
        self.checkpoint_state = self.checkpoint_dir / "state.json"
        self.checkpoint_last = self.checkpoint_dir / "last.keras"
        self.checkpoint_best = self.checkpoint_dir / "best.keras"
        self.predictions_dir = self.model_dir / "predictions"

    def _evaluated(self, cfg: DictConfig, fold_dir: str | None) -> None:
        """evaluate: metrics/<dataset>/<name>.json, plots/<dataset>/<name>/; a cross-validated member's out-of-fold
        and fold-averaged test predictions in predictions/<dataset>/<name>/."""
        self.metrics = project_path(cfg.paths.metrics) / self.dataset / f"{self.name}.json"
        self.plots = project_path(cfg.paths.plots) / self.dataset / self.name
        self.learning_curve = (self.plots / fold_dir if fold_dir else self.plots) / "learning_curve.png"
        self.val_predictions = self.plots / "val_predictions.csv"
        self.member_predictions_dir = project_path(cfg.paths.predictions) / self.dataset / self.name
        self.oof = self.member_predictions_dir / "oof.csv"
        self.oof_test = self.member_predictions_dir / "test.csv"

    def _searched(self, cfg: DictConfig) -> None:
        """python -m src.search: the Optuna store (optuna.db beside the MLflow sqlite store unless search.storage
        names one) and models/<dataset>/<study>-search/: best.json, trials.csv; each trial trains as a run named
        <study>-trial<k>."""
        from .tracking import store_folder

        search = cfg.get("search") or {}
        self.study = str(search.get("study") or self.name)
        self.optuna_db = store_folder(cfg) / "optuna.db"
        self.search_dir = self.member_dir.parent / f"{self.study}-search"
        self.search_best = self.search_dir / "best.json"
        self.search_trials = self.search_dir / "trials.csv"

    def predictions(self, split: str) -> Path:
        """The model's raw probabilities for a split ("val" or "test"), with ids; its .json describes them."""
        return self.predictions_dir / f"{split}.csv"

    def feature_cache(self, key: str) -> Path:
        """One extractor's embeddings of the prepared images (src/features.py): train.npy, test.npy (+ _flip)."""
        return self.features / key

    def plot(self, filename: str) -> Path:
        return self.plots / filename

    def dataset_submissions(self) -> list[Path]:
        """Every submissions/<dataset>-*.csv, oldest first."""
        if not self.submissions.is_dir():
            return []
        return sorted(self.submissions.glob(f"{self.dataset}-*.csv"), key=lambda p: p.stat().st_mtime)

    def download(self, competition: str) -> tuple[Path, Path, Path]:
        """The competition zip, its partial download, and the partial's marker (remote size and ETag)."""
        zip_path = self.raw / f"{competition}.zip"
        return zip_path, zip_path.with_name(zip_path.name + ".part"), zip_path.with_name(zip_path.name + ".part.json")
