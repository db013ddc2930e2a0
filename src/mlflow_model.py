"""The MLflow Model a member is logged as (src/tracking.py, log_model): images in, the probabilities its
submission holds out.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/kagglepipe-dogs_vs_cats@best")   # or the run page's model URI
    model.predict(images)   # uint8 RGB (N, H, W, 3), resized as prepare resizes -> DataFrame, one p_<class> a column

A pyfunc model rather than the mlflow.keras flavour: the flavour would give the network's own outputs, while a
submission holds the fold models' average (cv.average), over flipped copies too with train.tta, finalized with the
temperature and clip chosen on validation (src/submission.py). This wrapper does exactly that with the project's
own functions, so it predicts what src.predict writes.

MLflow's "models from code": this file is the model's code (MLflow runs it; the project never imports it), its
artifacts are the Keras files (model-0, model-1, ...: one per fold) and settings.json (an artifact, not MLflow's
model_config, which MLflow would also log as run params: a second evaluate with another clip could not), and src/
travels inside the model as its code path.
"""
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd


class Member(mlflow.pyfunc.PythonModel):
    """k Keras models (one: a single model; k: a cross-validated member's folds) and how their outputs become the
    submitted probabilities (the artifact settings.json: classes, tta, average, temperature, clip)."""

    def load_context(self, context):
        from src.inference import load_keras

        self.settings = json.loads(Path(context.artifacts["settings"]).read_text())
        names = sorted((k for k in context.artifacts if k.startswith("model-")), key=lambda k: int(k[6:]))
        self.models = [load_keras(Path(context.artifacts[k])) for k in names]

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        # np.ndarray: a hint MLflow infers no schema from (the signature is given when logged), and warns not about
        from src.inference import predict_proba
        from src.oof import average
        from src.submission import finalize

        s = self.settings
        x = np.asarray(model_input, dtype=np.uint8)
        x = x[None] if x.ndim == 3 else x
        each = [predict_proba(m, lambda flip: x[:, :, ::-1] if flip else x, bool(s["tta"]), "mlflow model", len(x))
                for m in self.models]
        p = each[0] if len(each) == 1 else average(each, str(s["average"]))
        p = finalize(p, float(s["temperature"]), float(s["clip"]))
        return pd.DataFrame(np.stack([1 - p, p], axis=1) if p.ndim == 1 else p,
                            columns=[f"p_{c}" for c in s["classes"]])


mlflow.models.set_model(Member())
