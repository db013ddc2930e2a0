"""GPU training throughput through the project's own train path (issue 8).

For each model (seed CNN at 150x150 on Dogs vs Cats, ResNet-9 at 32x32 on CIFAR-10) and each precision
policy (float32, mixed_float16, mixed_bfloat16) it builds the model with src.models.build_model, compiles
it with src.optimizer.compile_model and runs Model.fit on
  pipeline:  src.data.train_dataset over the prepared images (memory-mapped, seeded shuffle, batch, prefetch),
  ceiling:   one prepared batch repeated from memory (no input work: the compute-only ceiling),
reporting steady-state images/s, step time, and the first call's extra time (compile/XLA) separately.

    KERAS_BACKEND=jax python benchmarks/gpu_train.py --dogs <raw dogs_vs_cats> --cifar <raw cifar10>
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(cfg, m, policy: str, steps: int, batch: int) -> dict:
    import keras
    import tensorflow as tf

    from src.data import train_dataset
    from src.models import build_model
    from src.optimizer import compile_model

    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    out = {"policy": policy, "batch": batch}
    pipe = train_dataset(m, batch, 0, drop_remainder=True).repeat()
    x, y = next(iter(pipe))
    ceiling = tf.data.Dataset.from_tensors((x, y)).repeat()
    # One model per policy (one compilation): the ceiling and the pipeline feed the same shapes.
    model = build_model(cfg.model, m.image_shape, m.num_classes, cfg.augment, 0)
    compile_model(model, cfg, m.num_classes, steps)
    for label, ds in (("ceiling", ceiling), ("pipeline", pipe)):
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)  # first call: compile (+ cache fill)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        steady = time.perf_counter() - t0
        out[f"{label}_img_s"] = round(steps * batch / steady, 1)
        out[f"{label}_step_ms"] = round(1000 * steady / steps, 3)
        out[f"{label}_first_call_s"] = round(first, 2)
        print(f"  {cfg.model.name} {policy} {label}: first call {first:.1f}s, steady {steps * batch / steady:.0f} img/s",
              flush=True)
    out["compile_s"] = round(max(0.0, out["ceiling_first_call_s"] - steps * batch / out["ceiling_img_s"]), 2)
    del model
    keras.backend.clear_session()
    out["pipeline_vs_ceiling"] = round(out["pipeline_img_s"] / out["ceiling_img_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dogs", default=str(ROOT.parent / "shared/data/dogs_vs_cats"))
    ap.add_argument("--cifar", default=str(ROOT.parent / "shared/data/cifar10"))
    ap.add_argument("--work", default="/tmp/kagglepipe-gpu-bench")
    ap.add_argument("--policies", default="float32,mixed_float16,mixed_bfloat16")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default="seed_cnn,resnet_cifar")
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. augment=none")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/gpu_train.json"))
    a = ap.parse_args()

    import keras

    from src import manifests, prepare
    from src.config import compose
    from src.runtime import accelerators

    cases = [c for c in [("seed_cnn", "dogs_vs_cats", a.dogs), ("resnet_cifar", "cifar10", a.cifar)]
             if c[0] in a.models.split(",")]
    rows = []
    for model, ds, raw in cases:
        cfg = compose([f"dataset={ds}", f"model={model}", f"dataset.raw_dir={raw}", f"paths.processed={a.work}/processed",
                       "tracking.enabled=false", f"train.batch_size={a.batch}", "train.optimizer=sgd", "train.lr=0.01",
                       *a.overrides])
        m = manifests.load(prepare.run(cfg))
        for policy in a.policies.split(","):
            r = {"model": model, "image": f"{m.image_shape[0]}x{m.image_shape[1]}", "overrides": " ".join(a.overrides),
                 **measure(cfg, m, policy, a.steps, a.batch)}
            print(json.dumps(r), flush=True)
            rows.append(r)
    for model in {r["model"] for r in rows}:
        f32 = next((r for r in rows if r["model"] == model and r["policy"] == "float32"), None)
        for r in rows:
            if r["model"] == model and f32:
                r["ceiling_vs_float32"] = round(r["ceiling_img_s"] / f32["ceiling_img_s"], 3)
                r["pipeline_vs_float32"] = round(r["pipeline_img_s"] / f32["pipeline_img_s"], 3)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "backend": keras.config.backend(),
              "devices": accelerators(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "keras": keras.__version__, "steps": a.steps, "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    cols = ["model", "image", "policy", "batch", "ceiling_img_s", "pipeline_img_s", "pipeline_vs_ceiling",
            "ceiling_vs_float32", "pipeline_step_ms", "compile_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))


if __name__ == "__main__":
    main()
