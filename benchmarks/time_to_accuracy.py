"""Train an experiment several times through the project's own commands and score each submission CSV.

Each repeat runs `python -m src.train +experiment=<x> seed=<i> name=<x>-<i>` then `python -m src.predict ...` (which
evaluates first), and scores submissions/<dataset>-<name>.csv against labels Kaggle keeps hidden (CIFAR-10:
../shared/data/cifar10/test_labels_for_benchmarks.csv, read only here, never by training). Time is taken from the
run's history: the first epoch (which includes compiling) is reported apart from the rest. With time left inside
--budget, each --variant (extra overrides) runs once after the seeds. The JSON is rewritten after every run.

    python benchmarks/time_to_accuracy.py --experiment cifar10_speed --repeats 3 --budget 480 \
        --variant "train.epochs=12" -- dataset.raw_dir=/path/to/cifar10
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
sys.path.insert(0, str(ROOT / "benchmarks"))


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
    ap.add_argument("--out", default=None, help="default: benchmarks/results/time_to_accuracy-<experiment>-<gpu>.json")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds: no run starts that would overrun it (each run is assumed to take the longest so far)")
    ap.add_argument("--variant", action="append", default=[],
                    help="after the seeds, with time left, one run of these extra overrides (space-separated); repeatable")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    from src.config import compose

    from benchutil import gpu_name

    started, longest, runs = time.perf_counter(), 0.0, []
    out = Path(a.out or ROOT / f"benchmarks/results/time_to_accuracy-{a.experiment}-{gpu_name()}.json")
    plan = [(i, []) for i in range(a.repeats)] + [(0, v.split()) for v in a.variant]
    for k, (seed, variant) in enumerate(plan):
        if a.budget is not None and time.perf_counter() - started + longest > a.budget:
            print(f"time_to_accuracy: stopping before run {k + 1} of {len(plan)}: the {a.budget:.0f}s budget would be "
                  "overrun", flush=True)
            break
        t0 = time.perf_counter()
        name = f"{a.experiment}-{seed}" + (f"-v{k - a.repeats}" if variant else "")
        ov = [f"+experiment={a.experiment}", f"seed={seed}", f"name={name}", *a.overrides, *variant]
        t_train = run([sys.executable, "-m", "src.train", *ov], env)
        t_pred = run([sys.executable, "-m", "src.predict", *ov], env)
        r = {**_timings(compose(ov), seed, t_train, t_pred), "variant": " ".join(variant)}
        if Path(a.labels).is_file():
            r.update(score_csv(r["csv"], a.labels))
        print(json.dumps(r), flush=True)
        runs.append(r)
        longest = max(longest, time.perf_counter() - t0)
        _write(out, a, runs)
    _write(out, a, runs)
    _table(runs)


def _timings(cfg, seed: int, t_train: float, t_pred: float) -> dict:
    """Training seconds from the run's history: the first epoch (which compiles) apart from the rest."""
    from src.files import read_json
    from src.paths import Layout

    lay = Layout(cfg)
    hist, info = read_json(lay.history), read_json(lay.run_info)
    secs = [h.get("epoch_seconds", 0.0) for h in hist]
    later = secs[1:]
    return {"seed": seed, "epochs": len(hist), "first_epoch_s": round(secs[0], 2) if secs else None,
            "later_epochs_s": round(sum(later), 2),
            # the first epoch without its compile counted as a later one
            "train_s_excl_compile": round(sum(later) + sum(later) / max(1, len(later)), 2),
            "fit_s": info.get("fit_seconds"), "train_cmd_s": round(t_train, 1), "predict_cmd_s": round(t_pred, 1),
            "device": info.get("runtime.device"), "precision": info.get("runtime.precision"),
            "csv": str(lay.submission)}


def _write(out: Path, a, runs: list[dict]) -> None:
    seeds = [r for r in runs if not r["variant"] and "accuracy" in r]
    accs = [r["accuracy"] for r in seeds]
    summary = {"experiment": a.experiment, "overrides": a.overrides, "runs": runs,
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "mean_accuracy": sum(accs) / len(accs) if accs else None,
               "mean_train_s_excl_compile": sum(r["train_s_excl_compile"] for r in seeds) / len(seeds) if seeds else None}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


def _table(runs: list[dict]) -> None:
    print("seed | variant | epochs | accuracy | first epoch s (compile) | train s excl. compile | device")
    for r in runs:
        print(f"{r['seed']} | {r['variant'] or '-'} | {r['epochs']} | {r.get('accuracy', float('nan')):.4f} | "
              f"{r['first_epoch_s']} | {r['train_s_excl_compile']} | {r['device']}")


if __name__ == "__main__":
    main()
