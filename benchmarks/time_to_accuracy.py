"""Train an experiment several times through the project's own commands and score each submission CSV.

Each repeat runs `python -m src.train +experiment=<x> seed=<i> name=<x>-<i>` then `python -m src.predict ...` (which
evaluates first),
and scores submissions/<dataset>-<name>.csv against labels Kaggle keeps hidden (CIFAR-10:
../shared/data/cifar10/test_labels_for_benchmarks.csv, read only here, never by training). Time is taken
from the run's history: the first epoch (which includes compiling) is reported apart from the rest.

    python benchmarks/time_to_accuracy.py --experiment cifar10_best --repeats 1 [-- extra overrides]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def score_csv(csv: str | Path, labels: str | Path) -> dict:
    """Accuracy of a class-name submission, or log loss + accuracy of a probability one, against true labels."""
    sub = pd.read_csv(csv)
    truth = pd.read_csv(labels)
    merged = truth.merge(sub, on="id", suffixes=("_true", "_pred"), how="left")
    if merged["label_pred"].isna().any():
        raise SystemExit(f"{csv}: {int(merged['label_pred'].isna().sum())} labelled ids missing from the submission")
    if pd.api.types.is_numeric_dtype(merged["label_pred"]):
        from sklearn.metrics import log_loss

        y = merged["label_true"].astype(int)
        p = merged["label_pred"].astype(float)
        return {"log_loss": float(log_loss(y, p, labels=[0, 1])), "accuracy": float(((p >= 0.5) == y).mean())}
    return {"accuracy": float((merged["label_true"] == merged["label_pred"]).mean()), "n": int(len(merged))}


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT, env=env)
    if r.returncode:
        raise SystemExit(f"command failed with exit code {r.returncode}: {' '.join(cmd)}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--labels", default=str(ROOT.parent / "shared/data/cifar10/test_labels_for_benchmarks.csv"))
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    from src.config import compose
    from src.files import read_json
    from src.paths import Layout

    runs = []
    for i in range(a.repeats):
        ov = [f"+experiment={a.experiment}", f"seed={i}", f"name={a.experiment}-{i}", *a.overrides]
        t_train = run([sys.executable, "-m", "src.train", *ov], env)
        t_pred = run([sys.executable, "-m", "src.predict", *ov], env)
        lay = Layout(compose(ov))
        hist = read_json(lay.history)
        secs = [h.get("epoch_seconds", 0.0) for h in hist]
        info = read_json(lay.run_info)
        r = {"seed": i, "epochs": len(hist), "first_epoch_s": round(secs[0], 2) if secs else None,
             "later_epochs_s": round(sum(secs[1:]), 2),
             "train_s_excl_compile": round(sum(secs[1:]) + (sum(secs[1:]) / max(1, len(secs) - 1)), 2),
             "fit_s": info.get("fit_seconds"), "train_cmd_s": round(t_train, 1), "predict_cmd_s": round(t_pred, 1),
             "device": info.get("runtime.device"), "precision": info.get("runtime.precision"),
             "csv": str(lay.submission)}
        if Path(a.labels).is_file():
            r.update(score_csv(lay.submission, a.labels))
        print(json.dumps(r), flush=True)
        runs.append(r)
    accs = [r["accuracy"] for r in runs if "accuracy" in r]
    summary = {"experiment": a.experiment, "overrides": a.overrides, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "runs": runs, "mean_accuracy": sum(accs) / len(accs) if accs else None}
    out = Path(a.out or ROOT / f"benchmarks/results/time_to_accuracy-{a.experiment}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print("seed | epochs | accuracy | first epoch s (compile) | train s excl. compile | device")
    for r in runs:
        print(f"{r['seed']} | {r['epochs']} | {r.get('accuracy', float('nan')):.4f} | {r['first_epoch_s']} | "
              f"{r['train_s_excl_compile']} | {r['device']}")
    print(f"mean accuracy {summary['mean_accuracy']}")


if __name__ == "__main__":
    main()
