"""Choosing the temperature and the clip on labelled probabilities (validation), by Kaggle's log loss.

evaluate.temperature=auto: the logits' temperature that minimises log loss (temperature scaling, Guo et al. 2017);
a number fixes it (1 = off). evaluate.clip=auto: the clip among evaluate.clip_candidates that minimises log loss
after the temperature; a number fixes it. src/submission.py applies both (finalize).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from omegaconf import DictConfig

from .metrics import kaggle_log_loss
from .submission import apply_temperature, clip_probabilities


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    clip: float = 1e-15

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def fit(settings: DictConfig, y_true: np.ndarray, p: np.ndarray) -> Calibration:
    """The temperature, then the clip, that evaluate.* asks for (chosen on these labels when 'auto')."""
    t = choose_temperature(y_true, p) if settings.temperature == "auto" else float(settings.temperature)
    calibrated = apply_temperature(p, t)
    clip = choose_clip(y_true, calibrated, list(settings.clip_candidates)) if settings.clip == "auto" \
        else float(settings.clip)
    return Calibration(t, clip)


def choose_temperature(y_true: np.ndarray, p: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature in [low, high] that minimises log loss; 1.0 unless it does better than no temperature."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda t: kaggle_log_loss(y_true, apply_temperature(p, math.exp(t))),
                          bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-4})
    best = round(math.exp(float(res.x)), 4)
    return best if kaggle_log_loss(y_true, apply_temperature(p, best)) < kaggle_log_loss(y_true, p) else 1.0


def choose_clip(y_true: np.ndarray, p: np.ndarray, candidates: Sequence[float]) -> float:
    """The clip among candidates that minimises log loss (ties go to the smallest)."""
    best, best_loss = None, math.inf
    for c in sorted(float(c) for c in candidates):
        loss = kaggle_log_loss(y_true, clip_probabilities(p, c))
        if loss < best_loss - 1e-12:
            best, best_loss = c, loss
    return float(best if best is not None else 1e-15)
