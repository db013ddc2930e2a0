"""Transfer learning on a CPU (issue 17): each keras.applications backbone's cost at 150x150, random weights
(speed only: ImageNet's weights cannot be downloaded here, and the weights do not change the speed).

    .venv/bin/python benchmarks/backbones.py                     # every backbone, ~50 min on 2 heavily shared cores
    .venv/bin/python benchmarks/backbones.py --only MobileNet --steps 1 --embed-batches 1    # a quick look
    .venv/bin/python benchmarks/backbones.py --report benchmarks/results/backbones.json   # its tables again

Measures, each backbone in its own process (peak memory is its own), with the project's code:

  embed      the frozen-feature mode's extractor (src/models/features.py: preprocessing + the frozen no-top
             network, average-pooled) predicting batches of --batch images (predict_on_batch, as the training
             steps use train_on_batch): seconds per image, what embedding a data set costs once (model=features
             caches it)
  head       scikit-learn's LogisticRegression head (src/features.fit_head) on 1,600 feature vectors of the
             backbone's width: seconds for the whole fit, what each later run of model=features costs
  phase 1    two-phase fine-tuning's head phase (src/finetune.py: backbone frozen), one training step per batch
             (train_on_batch), seconds per image
  phase 2    its fine-tuning phase (the whole backbone unfrozen, batch norm frozen, the layer-wise optimiser)
  memory     parameters, and the activations of one image (every layer's output, float32) at 150, 224 and 299:
             computed from the built network, not measured; a training step keeps roughly all of them for the
             backward pass, so one batch's fine-tuning needs about params x 16 bytes (weights, gradients and
             Adam's two moments) + batch x activations. The 150 px child's measured peak RSS is beside it.

Baseline in the same run: the from-scratch recipe's network (model=xception_mini, conf/experiment/
dogs_vs_cats_best) training at the same batch and size. First steps (tracing) are not timed: --steps steps are,
after one untimed step. train.jit_compile=false (XLA on the CPU compiles for minutes and runs no faster here).
Writes benchmarks/results/backbones.json (machine, load average, versions, every figure).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

BACKBONES = ["EfficientNetV2B0", "EfficientNetV2S", "ConvNeXtTiny", "ResNet50V2", "Xception", "InceptionV3",
             "EfficientNetB0", "ResNet50", "MobileNet"]
MODEL = {"MobileNet": "mobilenet", "EfficientNetB0": "efficientnet_b0", "EfficientNetV2B0": "efficientnet_v2_b0",
         "EfficientNetV2S": "efficientnet_v2_s", "ConvNeXtTiny": "convnext_tiny", "ResNet50": "resnet50",
         "ResNet50V2": "resnet50_v2", "Xception": "xception", "InceptionV3": "inception_v3"}
SIZES = (150, 224, 299)


def _cfg(model: str, size: int, *extra: str):
    from src.config import compose

    return compose([f"model={model}", "dataset=dogs_vs_cats", f"dataset.image_size={size}", "train.jit_compile=false",
                    "train.finetune.head_epochs=1", "train.epochs=2", "augment=none", *extra])


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype("uint8")


def _per_image(step, batch: int, steps: int) -> float:
    step()  # traced, not timed
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / (steps * batch)


# ------------------------------------------------------------------ children
def child_backbone(args) -> dict:
    import keras

    from src import finetune
    from src.features import fit_head
    from src.models import build_model, model_params
    from src.models.features import extractor
    from src.optimizer import compile_model

    name, size, bs = args.backbone, args.size, args.batch
    x, y = _images(bs, size), np.random.default_rng(1).integers(0, 2, (bs, 1)).astype("float32")
    fcfg = _cfg("features", size, f"model.backbones=[{name}]")
    embed = extractor(name, (size, size, 3), model_params(fcfg.model))
    out = {"backbone": name, "size": size, "batch": bs,
           "embed_s_per_img": _per_image(functools.partial(embed.predict_on_batch, x), bs, args.embed_batches)}
    dims = int(embed.output_shape[-1])
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(1600, dims)).astype("float32")
    labels = (feats @ rng.normal(size=dims) > 0).astype(int)
    t0 = time.perf_counter()
    fit_head(model_params(fcfg.model), feats, labels, 2, 0)
    out.update(features=dims, head_fit_s_1600=time.perf_counter() - t0)
    del embed
    keras.backend.clear_session()

    cfg = _cfg(MODEL[name], size, f"train.batch_size={bs}")
    model = build_model(cfg.model, (size, size, 3), 2, None)
    state = type("State", (), {"phase": 0, "epoch": 1, "wait": 0, "phase_start": None})()
    compile_model(model, cfg, 2, 50, finetune.start(model, cfg, state, 50))
    out["phase1_s_per_img"] = _per_image(lambda: model.train_on_batch(x, y), bs, args.steps)
    compile_model(model, cfg, 2, 50, finetune.begin_phase_2(model, cfg, state, 50))
    out["phase2_s_per_img"] = _per_image(lambda: model.train_on_batch(x, y), bs, args.steps)
    out["trainable_params_phase2"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    out["peak_rss_mb"] = bu.peak_rss_mb()
    return out


def child_baseline(args) -> dict:
    """The from-scratch recipe's network (xception_mini, stride-2 stem as in the recipe) at the same batch."""
    from src.config import compose
    from src.models import build_model
    from src.optimizer import compile_model

    size, bs = args.size, args.batch
    cfg = compose(["model=xception_mini", "model.stem_strides=2", f"dataset.image_size={size}",
                   "train.jit_compile=false", "augment=none"])
    model = build_model(cfg.model, (size, size, 3), 2, None)
    compile_model(model, cfg, 2, 50)
    x, y = _images(bs, size), np.random.default_rng(1).integers(0, 2, (bs, 1)).astype("float32")
    return {"backbone": "xception_mini (from scratch)", "size": size, "batch": bs,
            "train_s_per_img": _per_image(lambda: model.train_on_batch(x, y), bs, args.steps),
            "params": int(model.count_params()), "peak_rss_mb": bu.peak_rss_mb()}


def child_memory(args) -> dict:
    """Parameters and one image's activations (every layer output, float32) at each size; computed, not measured."""
    import keras

    from src.models.weights import network

    out = {"backbone": args.backbone}
    for size in SIZES:
        net = network(args.backbone, (size, size, 3), None)
        out["params"] = int(net.count_params())
        out[f"activations_mb_{size}"] = _activation_floats(net) * 4 / 2**20
        keras.backend.clear_session()
    return out


def _activation_floats(model) -> int:
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # a nested stage (ConvNeXt's stem and downsampling)
            total += _activation_floats(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            total += sum(int(np.prod(t.shape[1:])) for t in keras.tree.flatten(layer.output))
    return total


# ------------------------------------------------------------------ the run
def run_all(args) -> None:
    script = Path(__file__).resolve()
    info = {"machine": bu.machine(), "versions": bu.versions("keras", "tensorflow", "sklearn", "numpy"),
            "settings": {"size": args.size, "batch": args.batch, "steps": args.steps,
                         "embed_batches": args.embed_batches, "weights": "random", "jit_compile": False}}
    common = ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
              "--embed-batches", str(args.embed_batches)]
    baseline = bu.run_child(script, ["--what", "baseline", *common], timeout=3600)
    print(f"baseline {baseline['backbone']}: {baseline['train_s_per_img'] * 1000:.1f} ms/img", flush=True)
    rows: list[dict] = []
    info.update(baseline=baseline, backbones=rows, complete=False)
    for name in args.only or BACKBONES:
        speed = bu.run_child(script, ["--what", "backbone", "--backbone", name, *common], timeout=3600)
        memory = bu.run_child(script, ["--what", "memory", "--backbone", name], timeout=3600)
        row = {**speed, **memory, "load_after": bu.load()}
        row["phase2_vs_scratch"] = row["phase2_s_per_img"] / baseline["train_s_per_img"]
        for size in SIZES:
            mb = row["params"] * 16 / 2**20 + args.batch * row[f"activations_mb_{size}"]
            row[f"finetune_batch_gb_{size}"] = mb / 1024
        rows.append(row)
        print(f"{name}: embed {row['embed_s_per_img'] * 1000:.1f} ms/img, phase 1 "
              f"{row['phase1_s_per_img'] * 1000:.1f}, phase 2 {row['phase2_s_per_img'] * 1000:.1f} ms/img "
              f"(load {row['load_after']})", flush=True)
        bu.write_result("backbones", info, args.out)  # what is measured so far survives a stopped run
    _report(rows, baseline, args)
    info["complete"] = True
    print(f"-> {bu.write_result('backbones', info, args.out)}")


def _report(rows: list[dict], baseline: dict, args) -> None:
    for r in rows:
        for k in ("embed", "phase1", "phase2"):
            r[f"{k}_ms"] = r[f"{k}_s_per_img"] * 1000
        r["params_m"] = r["params"] / 1e6
    print(f"\nspeed at {args.size}x{args.size}, batch {args.batch}, random weights, "
          f"{bu.machine()['cpu_count']} cores; from-scratch baseline (xception_mini) "
          f"{baseline['train_s_per_img'] * 1000:.1f} ms/img training\n")
    print(bu.table(rows, [("backbone", "backbone"), ("params_m", "params (M)"), ("features", "features"),
                          ("embed_ms", "embed ms/img"), ("head_fit_s_1600", "head fit s (1,600 img)"),
                          ("phase1_ms", "phase 1 ms/img"), ("phase2_ms", "phase 2 ms/img"),
                          ("phase2_vs_scratch", "phase 2 / scratch"), ("peak_rss_mb", "peak RSS MB (150)")]))
    print("\nmemory: one image's activations (MB, computed) and one fine-tuning batch "
          f"(GB, params x 16 B + {args.batch} x activations)\n")
    cols = [("backbone", "backbone")]
    for size in SIZES:
        cols += [(f"activations_mb_{size}", f"act. MB {size}"), (f"finetune_batch_gb_{size}", f"batch GB {size}")]
    print(bu.table(rows, cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=BACKBONES, help="these backbones only")
    ap.add_argument("--size", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per phase")
    ap.add_argument("--embed-batches", type=int, default=3, help="timed embedding batches")
    ap.add_argument("--out", help="result JSON (default benchmarks/results/backbones.json)")
    ap.add_argument("--report", metavar="JSON", help="print the tables of an earlier result file and stop")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--what", choices=["backbone", "baseline", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--backbone", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        import json

        done = json.loads(Path(args.report).read_text())
        args.size, args.batch = done["settings"]["size"], done["settings"]["batch"]
        _report(done["backbones"], done["baseline"], args)
        return
    if not args.child:
        run_all(args)
        return
    bu.emit({"backbone": child_backbone, "baseline": child_baseline, "memory": child_memory}[args.what](args))


if __name__ == "__main__":
    main()
