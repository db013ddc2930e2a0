"""The Dogs vs Cats blend recipe (conf/blend/dogs_vs_cats.yaml) end to end inside a time budget, through the
project's own commands: each member's 5 folds (python -m src.train), its out-of-fold evaluation
(python -m src.evaluate), then the blend of the members that finished (python -m src.blend). It is what the lent
GPU machine runs for issue 16, where one session has about ten minutes of runs and the recipe needs hours of CPU.

Members train strongest first (MEMBERS). A train that would run past the budget gets SIGINT, which stops it at a
batch end without checkpointing the unfinished epoch (src/interrupts.py), so running this again on the same
--work resumes that fold; the blend takes the members whose folds all finished (at least two). The JSON is
written after every step (each member's train seconds, finished folds and OOF metrics, the blend's OOF score
and weights), the members' OOF/test predictions and the blended submission are copied beside it, and a table
is printed last.

    KERAS_BACKEND=jax python3 benchmarks/cv_blend.py --budget 540 --raw /tmp/gpu-data/dogs_vs_cats --out $OUT/cv_blend.json
    python benchmarks/cv_blend.py --dry-run      # a CPU, ~3 min: two members, generated photos, 2 folds of 1 epoch
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchutil  # noqa: E402

# name -> how it is trained; the blend config lists the same names (the order here is the training order)
MEMBERS = {
    "xception_mini_cv_long": ["+experiment=dogs_vs_cats_cv_xception_long"],
    "xception_mini_cv": ["+experiment=dogs_vs_cats_cv_xception"],
    "resnet_small_cv": ["+experiment=dogs_vs_cats_cv_resnet"],
    "xception_mini_cv_s7": ["+experiment=dogs_vs_cats_cv_xception", "name=xception_mini_cv_s7", "seed=7"],
}
DRY_RUN = ["cv.folds=2", "train.epochs=1", "train.warmup_epochs=0", "dataset.image_size=32"]
BLEND = ["+blend=dogs_vs_cats"]
STOP_GRACE_S = 120  # after SIGINT: the batch in flight, the MLflow run's end


def work_overrides(work: Path) -> list[str]:
    """Every output under one folder, so that a run here never touches the project's own data and models."""
    dirs = ("processed", "models", "metrics", "plots", "predictions", "submissions", "features")
    return [f"paths.{d}={work / d}" for d in dirs]


def layout(cfg, **keys):
    """Where a command of this config (with these keys over it) writes: src/paths.py's Layout, every path's home."""
    from omegaconf import OmegaConf

    from src.paths import Layout

    return Layout(OmegaConf.merge(cfg, keys) if keys else cfg)


def run(cmd: list[str], deadline: float, env: dict) -> tuple[int, float]:
    """Run a project command; SIGINT at the deadline (a training stops at the next batch end). (exit code, s)"""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    # SIGINT's default in the child: a background job of a non-interactive shell (`cmd &` in a script, nohup ... &)
    # starts with SIGINT ignored and passes that on, so a training still importing at the deadline would ignore it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.wait(timeout=max(deadline - t0, 1))
    except subprocess.TimeoutExpired:
        print(f"cv_blend: budget reached; stopping {cmd[2]} at its next batch end", flush=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode, time.monotonic() - t0


def oof_metrics(lay) -> dict:
    m = json.loads(lay.metrics.read_text())
    keep = ("val_log_loss", "val_accuracy", "val_roc_auc", "val_log_loss_model", "temperature", "clip",
            "fold_val_log_loss", "fold_val_log_loss_mean", "fold_val_log_loss_std")
    return {k: m[k] for k in keep if k in m}


def finished_folds(cfg) -> dict:
    """Each finished fold's best validation log loss, its epoch and fit seconds (its run.json), so that a member
    the budget cut short still tells how far it got and how long a fold takes."""
    keep = ("best_val_log_loss", "best_epoch", "epochs_run", "fit_seconds", "runtime.precision")
    runs = {i: layout(cfg, cv={"fold": i}).run_info for i in range(int(cfg.cv.folds))}
    return {f"fold-{i}": {k: v for k, v in json.loads(p.read_text()).items() if k in keep}
            for i, p in runs.items() if p.is_file()}


def copy_outputs(dest: Path, members: list, blend) -> None:
    """The members' OOF/test predictions and the blended submission, beside the JSON (a few hundred KB)."""
    for lay in members:
        for src in (lay.oof, lay.oof_test):
            if src.exists():
                (dest / lay.name).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / lay.name / src.name)
    for src in (blend.submission, blend.submission_record):
        if src.exists():
            shutil.copy2(src, dest / src.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=None, help="seconds for all of it, the blend included "
                    "(default 540; 1800 for --dry-run)")
    ap.add_argument("--raw", default=str(ROOT.parent / "shared/data/dogs_vs_cats"), help="the Kaggle layout")
    ap.add_argument("--work", default=None, help="outputs (prepared data, models, predictions); reuse it to resume")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/cv_blend-<gpu>.json")
    ap.add_argument("--members", nargs="+", default=None, choices=list(MEMBERS),
                    help="default: all, in MEMBERS' order; the first two for --dry-run")
    ap.add_argument("--blend-reserve", type=float, default=90, help="seconds kept back for the blend")
    ap.add_argument("--dry-run", action="store_true", help="generated photos, 2 folds, 1 epoch at 32x32")
    a = ap.parse_args()
    a.budget = a.budget if a.budget is not None else 1800 if a.dry_run else 540
    a.members = a.members or list(MEMBERS)[:2 if a.dry_run else None]
    started = time.monotonic()
    deadline = started + a.budget
    work = Path(a.work or tempfile.mkdtemp(prefix="kagglepipe-cv-blend-"))
    extra = work_overrides(work)
    raw = Path(a.raw)
    if a.dry_run:
        from src.demo_data import make_demo_dataset

        raw = make_demo_dataset(work / "raw", n_train_per_class=12, n_test=6)
        extra += DRY_RUN
    extra.append(f"dataset.raw_dir={raw}")
    env = {**benchutil.child_env(), "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI",
                                                                          f"sqlite:///{work / 'mlflow.db'}")}
    out = Path(a.out or ROOT / f"benchmarks/results/cv_blend-{benchutil.gpu_name()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": benchutil.machine(), "budget_s": a.budget, "work": str(work), "dry_run": a.dry_run,
              "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"), "members": {}, "blend": None}
    from src.config import compose

    py = sys.executable
    lays = {}
    for name in a.members:
        overrides = [*MEMBERS[name], *extra]
        cfg = compose(overrides)
        lays[name] = layout(cfg)
        row = result["members"][name] = {"command": " ".join(MEMBERS[name])}
        rc, row["train_s"] = run([py, "-m", "src.train", *overrides], deadline - a.blend_reserve, env)
        row["finished"], row["folds"] = rc == 0, finished_folds(cfg)
        if rc == 0:
            rc, row["evaluate_s"] = run([py, "-m", "src.evaluate", *overrides], deadline, env)
            row.update(oof_metrics(lays[name]) if rc == 0 else {"evaluate_exit": rc})
        benchutil.write_result("cv_blend", result, out)
        if not row["finished"] or time.monotonic() > deadline - a.blend_reserve:
            break
    done = [n for n, r in result["members"].items() if "val_log_loss" in r]
    blend_overrides = [*BLEND, f"blend.members=[{','.join(done)}]", *extra]
    cfg = compose(blend_overrides)
    blend = layout(cfg, name=cfg.blend.name, cv={"fold": None})  # as src/blend.py names its outputs
    if len(done) >= 2:
        rc, blend_s = run([py, "-m", "src.blend", *blend_overrides], deadline + STOP_GRACE_S, env)
        result["blend"] = {"member_names": done, "blend_s": blend_s, "exit": rc}
        if rc == 0:
            result["blend"].update(json.loads(blend.metrics.read_text()))
    result["wall_s"] = time.monotonic() - started
    copy_outputs(out.parent, [lays[n] for n in done], blend)
    benchutil.write_result("cv_blend", result, out)
    rows = [{"member": n, **r} for n, r in result["members"].items()]
    if result["blend"] and "val_log_loss" in result["blend"]:
        rows.append({"member": f"blend of {len(done)}", **result["blend"]})
    print(benchutil.table(rows, [("member", "member"), ("finished", "all folds"), ("train_s", "train s"),
                                 ("val_log_loss", "OOF log loss"), ("val_accuracy", "OOF accuracy"),
                                 ("fold_val_log_loss_std", "fold std")]))
    print(f"cv_blend: {result['wall_s']:.0f} s of a {a.budget:.0f} s budget -> {out}")


if __name__ == "__main__":
    main()
