"""GPU training throughput through the project's own train path: does mixed precision pay, does the input keep up?

For each model (the seed CNN at 150x150 on Dogs vs Cats, then ResNet-9 at 32x32 on CIFAR-10) and each precision
policy (float32, mixed_float16, mixed_bfloat16) it prepares the data with src.prepare, builds the model with
src.models.build_model (the dataset's augmentation inside the model, as training runs it), sets the policy as
src.runtime does, compiles with src.optimizer.compile_model, and times Model.fit fed by
  pipeline:  src.data.train_dataset over the prepared images (memory-mapped, seeded shuffle, batch, prefetch),
  ceiling:   one prepared batch held in memory and repeated (no input work: the compute-only ceiling),
reporting steady-state images/s and step time, and the first call's extra time (compile/XLA) apart. With time
left it measures the seed CNN again without rotation (what rotation costs). It writes its JSON after every row
and stops before a measurement would overrun --budget seconds, keeping what it measured; the table comes last.

    KERAS_BACKEND=jax python benchmarks/gpu_train.py --budget 420 --dogs <raw dogs_vs_cats> --cifar <raw cifar10>
    python benchmarks/gpu_train.py --dry-run        # seconds on a CPU: tiny generated data, every code path
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
COLUMNS = ["model", "image", "policy", "batch", "augment", "ceiling_img_s", "pipeline_img_s", "pipeline_vs_ceiling",
           "vs_float32", "pipeline_step_ms", "compile_s", "loss_scaling"]


def measure(cfg, m, policy: str, steps: int, batch: int) -> dict:
    """One model and policy: the in-memory ceiling, then the pipeline, on the same compiled model."""
    import keras
    import tensorflow as tf

    from src.data import train_dataset
    from src.models import build_model
    from src.optimizer import compile_model

    keras.backend.clear_session()
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    pipe = train_dataset(m, batch, 0, drop_remainder=True).repeat()
    x, y = next(iter(pipe))
    ceiling = tf.data.Dataset.from_tensors((x, y)).repeat()
    model = build_model(cfg.model, m.image_shape, m.num_classes, cfg.augment, 0)
    compile_model(model, cfg, m.num_classes, steps)
    out = {"policy": policy, "batch": batch,
           "loss_scaling": type(model.optimizer).__name__ == "LossScaleOptimizer"}
    for label, ds in (("ceiling", ceiling), ("pipeline", pipe)):
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)  # the first call compiles
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        steady = time.perf_counter() - t0
        out[f"{label}_img_s"] = round(steps * batch / steady, 1)
        out[f"{label}_step_ms"] = round(1000 * steady / steps, 3)
        out[f"{label}_first_call_s"] = round(first, 2)
    out["compile_s"] = round(max(0.0, out["ceiling_first_call_s"] - out["ceiling_step_ms"] * steps / 1000), 2)
    out["pipeline_vs_ceiling"] = round(out["pipeline_img_s"] / out["ceiling_img_s"], 3)
    keras.config.set_dtype_policy("float32")
    return out


def cases(a) -> list[tuple[str, str, str, list[str]]]:
    """(model, dataset, raw folder, extra overrides) in the order they are measured: the seed CNN first."""
    out = [("seed_cnn", "dogs_vs_cats", a.dogs, []), ("resnet_cifar", "cifar10", a.cifar, []),
           ("seed_cnn", "dogs_vs_cats", a.dogs, ["augment.rotation=0"])]
    return [c for c in out if c[0] in a.models.split(",")]


def dry_run_data(work: Path) -> tuple[str, str]:
    """Tiny raw folders in both layouts (demo photos at 48 px for the seed CNN, 32 px CIFAR-like PNGs)."""
    import numpy as np
    from PIL import Image

    from src.demo_data import make_demo_dataset

    dogs = make_demo_dataset(work / "raw" / "dogs", n_train_per_class=24, n_test=8)
    cifar = work / "raw" / "cifar"
    rng = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for part, n in (("train", 40), ("test", 8)):
        (cifar / part).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(cifar / part / f"{i}.png")
    (cifar / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i},{classes[i % 10]}\n" for i in range(1, 41)))
    (cifar / "sampleSubmission.csv").write_text("id,label\n" + "".join(f"{i},cat\n" for i in range(1, 9)))
    return str(dogs), str(cifar)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dogs", default=str(ROOT.parent / "shared/data/dogs_vs_cats"))
    ap.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--work", default=None, help="prepared data go here (default: a temporary folder)")
    ap.add_argument("--policies", default=None, help=f"default {','.join(POLICIES)}; a dry run: float32,mixed_bfloat16")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default="seed_cnn,resnet_cifar")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; no measurement starts that would overrun it")
    ap.add_argument("--dry-run", action="store_true", help="tiny generated data, 2 steps of batch 8: checks the script")
    ap.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/gpu_train-<gpu>.json)")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every case, e.g. train.jit_compile=true")
    a = ap.parse_args()
    started = time.perf_counter()
    work = Path(a.work or tempfile.mkdtemp(prefix="kagglepipe-gpu-"))
    if a.dry_run:  # float16 convolutions crawl on a CPU; loss scaling is checked in tests/test_models.py
        a.dogs, a.cifar = dry_run_data(work)
        a.steps, a.batch = 2, 8
        a.policies = a.policies or "float32,mixed_bfloat16"
    a.policies = a.policies or ",".join(POLICIES)

    import keras

    from benchutil import gpu_name
    from src import manifests, prepare
    from src.config import compose
    from src.runtime import accelerators

    devices = accelerators()
    out = Path(a.out or ROOT / f"benchmarks/results/gpu_train-{gpu_name(devices)}.json")
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "backend": keras.config.backend(),
              "devices": devices, "gpu": gpu_name(devices), "cpus": os.cpu_count(), "python": platform.python_version(),
              "keras": keras.__version__, "steps": a.steps, "budget_s": a.budget, "dry_run": a.dry_run, "results": []}
    last = 0.0  # the longest measurement so far: the next one is assumed to take as long
    for model, ds, raw, extra in cases(a):
        overrides = [f"dataset={ds}", f"model={model}", f"dataset.raw_dir={raw}", f"paths.processed={work}/processed",
                     "tracking.enabled=false", f"train.batch_size={a.batch}", "train.optimizer=sgd", "train.lr=0.01",
                     *(["dataset.image_size=48"] if a.dry_run and ds == "dogs_vs_cats" else []), *extra, *a.overrides]
        cfg = compose(overrides)
        m = manifests.load(prepare.run(cfg))
        for policy in a.policies.split(","):
            if extra and policy == "mixed_bfloat16":
                continue  # the no-rotation rerun: float32 and mixed_float16 say what rotation costs
            if time.perf_counter() - started + last > a.budget:
                print(f"gpu_train: stopping before {model} {policy}: the {a.budget:.0f}s budget would be overrun",
                      flush=True)
                return finish(result, out)
            t0 = time.perf_counter()
            row = {"model": model, "image": f"{m.image_shape[0]}x{m.image_shape[1]}", "augment": _augment(cfg),
                   "overrides": " ".join(extra + a.overrides), **measure(cfg, m, policy, a.steps, a.batch)}
            last = max(last, time.perf_counter() - t0)
            result["results"].append(row)
            _relative(result["results"])
            write(result, out)
            print(json.dumps(row), flush=True)
    finish(result, out)


def _augment(cfg) -> str:
    a = cfg.augment
    return f"flip={a.flip} zoom={a.zoom} translate={a.translate} rotation={a.rotation}"


def _relative(rows: list[dict]) -> None:
    """Each row's pipeline images/s against float32's for the same model and augmentation."""
    for r in rows:
        base = next((b for b in rows if b["model"] == r["model"] and b["augment"] == r["augment"]
                     and b["policy"] == "float32"), None)
        if base:
            r["vs_float32"] = round(r["pipeline_img_s"] / base["pipeline_img_s"], 3)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def finish(result: dict, out: Path) -> None:
    write(result, out)
    print(f"\n{len(result['results'])} measurement(s) -> {out}")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in result["results"]:
        print("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
