"""The frozen-feature mode (model=features, model=pixels): every prepared image embedded once by each frozen
extractor, the embeddings cached on disk, and a scikit-learn head fitted on the joined features in seconds.

    <paths.features>/<dataset>/<extractor>-<key>/   train.npy, test.npy (every row of prepare's arrays, float32),
                                                    train_flip.npy, test_flip.npy (train.tta), key.json

The key is a hash of what the embeddings depend on: the extractor, a hash of its weights' values (a new weights
file, ImageNet's or another seed's random weights each get their own entry), the image shape, the prepared data's
fingerprint (src/manifests.py), the Keras backend and the dtype policy. Every labelled image is embedded, so the
folds of a cross-validated member (cv.folds) all reuse one embedding. A run with the same key reuses it and embeds
nothing; a killed run keeps the extractors it finished.

The model is the extractors and the fitted head as one Keras model (src/models/features.py): train publishes it
as model.keras like any other, and predicts the validation and test images from the cached embeddings with its
head (src/inference.py's runner), the same numbers as the whole model gives from the images.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from typing import Any, Callable

import numpy as np
from omegaconf import DictConfig

from .files import atomic_path, read_json, short_hash, write_json
from .paths import Layout


def is_features(cfg: DictConfig) -> bool:
    return str(cfg.model.get("arch")) == "features"


class Embeddings:
    """The joined embeddings of prepare's images by the given extractors: from the cache, or computed once."""

    def __init__(self, lay: Layout, m, extractors: list, batch_size: int):
        self.lay, self.m, self.extractors, self.batch_size = lay, m, extractors, batch_size
        self.embedded = 0  # images embedded by this object (0: everything came from the cache)
        self._arrays: dict[tuple[str, str, bool], np.ndarray] = {}
        self._keys: dict[str, str] = {}

    def of(self, images: str, index, flip: bool = False) -> np.ndarray:
        """The rows `index` of the train or test array, every extractor's features side by side."""
        rows = np.asarray(index, dtype=np.int64)
        return np.concatenate([self._cached(e, images, flip)[rows] for e in self.extractors], axis=1)

    def _cached(self, e, images: str, flip: bool) -> np.ndarray:
        if (e.name, images, flip) not in self._arrays:
            folder = self.lay.feature_cache(f"{e.name}-{self._key(e)}")
            npy = folder / f"{images}{'_flip' if flip else ''}.npy"
            if not npy.is_file():
                self._embed(e, images, flip, npy)
            else:
                print(f"features: {e.name}: {images} embeddings{' (flipped)' if flip else ''} from the cache ({npy})")
            self._arrays[(e.name, images, flip)] = np.load(npy)
        return self._arrays[(e.name, images, flip)]

    def _key(self, e) -> str:
        if e.name not in self._keys:
            self._keys[e.name] = self._new_key(e)
        return self._keys[e.name]

    def _new_key(self, e) -> str:
        import keras

        parts = {"extractor": e.name, "weights": weights_digest(e), "shape": list(self.m.image_shape),
                 "data": self.m.fingerprint(), "backend": keras.config.backend(),
                 "policy": keras.config.dtype_policy().name}
        key = short_hash(parts)
        record = self.lay.feature_cache(f"{e.name}-{key}") / "key.json"
        if not record.is_file():
            write_json(record, parts)
        return key

    def _embed(self, e, images: str, flip: bool, npy) -> None:
        import pandas as pd

        from .data import eval_dataset

        source = self.m.train_images if images == "train" else self.m.test_images
        n = int(np.load(source, mmap_mode="r").shape[0])
        t0 = time.perf_counter()
        ds = eval_dataset(self.m, pd.DataFrame({"index": np.arange(n)}), self.batch_size, source, labelled=False,
                          flip=flip)
        x = np.asarray(e.predict(ds, verbose=0), dtype=np.float32)
        with atomic_path(npy, suffix=".npy") as tmp:
            np.save(tmp, x)
        self.embedded += n
        print(f"features: {e.name}: embedded {n} {images} images{' (flipped)' if flip else ''} in "
              f"{time.perf_counter() - t0:.1f}s -> {npy}")


def weights_digest(model) -> str:
    """A hash of a model's weight values, in order (what its embeddings depend on, whatever file they came from)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def _extractors(cfg: DictConfig, m):
    from .models import model_params
    from .models.features import extractor

    p = model_params(cfg.model)
    return p, [extractor(b, m.image_shape, p) for b in p.backbones]


def fit(cfg: DictConfig, m, rows, state, run_) -> float:
    """Embed (or read the cache), fit the head on the training rows, score it on the validation fold, and save the
    whole model as the run's best checkpoint (train publishes it); the seconds it took."""
    t0 = time.perf_counter()
    p, extractors = _extractors(cfg, m)
    emb = Embeddings(Layout(cfg), m, extractors, max(int(cfg.train.batch_size), 64))
    x, y = emb.of("train", rows["index"]), rows["label"].to_numpy()
    t_fit = time.perf_counter()
    head = fit_head(p, x, y, m.num_classes, int(cfg.seed))
    fit_seconds = time.perf_counter() - t_fit
    entry = {"epoch": 1, **_scores(head, x, y, ""), **_scores(head, emb.of("train", m.val["index"]),
                                                               m.val["label"].to_numpy(), "val_")}
    entry["epoch_seconds"] = round(time.perf_counter() - t0, 4)
    state.epoch, state.best_epoch, state.best_score, state.history = 1, 0, entry["val_log_loss"], [entry]
    from .checkpoint import save_model_atomic
    from .models.features import assemble

    save_model_atomic(assemble(extractors, head, p.name), state.best)
    run_.log_metrics({k: v for k, v in entry.items() if k != "epoch"}, step=1)
    run_.log_metrics({"features_embedded_images": emb.embedded, "features_head_seconds": fit_seconds})
    print(f"train: {p.head} head on {x.shape[1]} features of {len(x)} images ({'+'.join(p.backbones)}) in "
          f"{fit_seconds:.1f}s: val_log_loss={entry['val_log_loss']:.4f} val_accuracy={entry['val_accuracy']:.4f}")
    return time.perf_counter() - t0


AUTO_C = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]  # model.C=auto: the grid LogisticRegressionCV searches


def fit_head(p, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int):
    """scikit-learn's LogisticRegression or MLPClassifier on standardised features, as the Keras head."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    from .models.features import classifier

    scaler = StandardScaler().fit(x)
    if p.head == "logistic" and p.C == "auto":
        # C by 5-fold cross-validation on the training rows alone (log loss), never on the validation fold
        est = LogisticRegressionCV(Cs=AUTO_C, cv=5, scoring="neg_log_loss", max_iter=int(p.max_iter),
                                   random_state=seed)
    elif p.head == "logistic":
        est = LogisticRegression(C=float(p.C), max_iter=int(p.max_iter), random_state=seed)
    else:
        est = MLPClassifier(hidden_layer_sizes=tuple(p.hidden), alpha=float(p.alpha), max_iter=int(p.max_iter),
                            random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        est.fit(scaler.transform(x), y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        print(f"features: the {p.head} head did not converge in model.max_iter={p.max_iter} iterations; "
              "raise it if the validation loss disappoints")
    if p.head == "logistic" and p.C == "auto":
        print(f"features: model.C=auto chose C={float(np.ravel(est.C_)[0]):g} (5-fold CV log loss on the training rows)")
    if len(est.classes_) != num_classes:
        from .errors import UserError

        raise UserError(f"the training rows hold {len(est.classes_)} of the {num_classes} classes; the head needs "
                        "every class (use more images: train.subset=0)")
    model = classifier(x.shape[1], num_classes, list(p.hidden) if p.head == "mlp" else [])
    model.set_weights(dense_weights(est, scaler))
    return model


def dense_weights(est, scaler) -> list[np.ndarray]:
    """The fitted head's (kernel, bias) per Dense layer, the standardisation folded into the first:
    ((x - mean) / scale) @ W + b = x @ (W / scale) + (b - (mean / scale) @ W)."""
    if hasattr(est, "coefs_"):  # MLPClassifier
        pairs = list(zip(est.coefs_, est.intercepts_))
    else:
        pairs = [(est.coef_.T, est.intercept_)]
    w0, b0 = pairs[0]
    pairs[0] = (w0 / scaler.scale_[:, None], b0 - (scaler.mean_ / scaler.scale_) @ w0)
    return [a.astype(np.float32) for pair in pairs for a in pair]


def _scores(head, x: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    from . import metrics

    p = _probabilities(head, x)
    loss = metrics.kaggle_log_loss(y, p)
    return {f"{prefix}loss": loss, f"{prefix}log_loss": loss, f"{prefix}accuracy": metrics.accuracy(y, p)}


def _probabilities(head, x: np.ndarray) -> np.ndarray:
    p = np.asarray(head.predict(x, batch_size=1024, verbose=0), dtype=np.float64)
    return p.reshape(len(p)) if p.shape[1] == 1 else p


def predictor(cfg: DictConfig, m, model) -> tuple[Any, Callable[[str, bool], Any]]:
    """For src/inference.py: the model's head, and inputs(split, flip), the split's cached embeddings (computed by
    the model's own extractors if missing)."""
    from .models import model_params
    from .models.features import extractor_name

    p = model_params(cfg.model)
    emb = Embeddings(Layout(cfg), m, [model.get_layer(extractor_name(b)) for b in p.backbones],
                     max(int(cfg.train.batch_size), 64))

    def inputs(split: str, flip: bool):
        frame, images = (m.val, "train") if split == "val" else (m.test, "test")
        return emb.of(images, frame["index"], flip)
    return model.get_layer("head"), inputs


def cache_keys(lay: Layout) -> list[dict]:
    """What the cache holds (each entry's key.json), for a look from Python or a test."""
    return [read_json(k) for k in sorted(lay.features.glob("*/key.json"))] if lay.features.is_dir() else []
