"""Prediction throughput and memory (issue 3): the core of `python -m src.predict`, and prepare on CIFAR test PNGs.

    .venv/bin/python benchmarks/predict.py                        # ~2-3 minutes on 2 cores
    .venv/bin/python benchmarks/predict.py --cifar-images 10000   # every CIFAR-10 test image (slow on a CPU)
    .venv/bin/python benchmarks/predict.py --stream-images 300000 # Kaggle's full test size (the default)

Measures, each in its own process (peak memory is its own):

  prepare_cifar   src.prepare.run() on the CIFAR-10 layout: the 10,000 test PNGs of ../shared/data/cifar10
                  (plus 1,000 training PNGs, which prepare needs), all cores; img/s over all 11,000
  cifar_predict   src.inference.predict_proba over src.data.test_dataset (what src.inference runs for predict's
                  test.csv, batch 256),
                  model=resnet_cifar with untrained weights, 32x32, on the first --cifar-images test images
  dvc_predict     the same with model=seed_cnn on the 500 Dogs vs Cats test photos at 150x150
  stream          a synthetic 300,000-image test.npy (32x32x3 uint8, ~880 MB in /tmp, the real CIFAR test images
                  tiled) streamed through src.data.test_dataset and predict_proba with a tiny model (global
                  average pooling + softmax): resident memory sampled along the way must stay flat.
                  The file is deleted afterwards.
Timings include Keras' first-call tracing, as a predict run pays it. Writes benchmarks/results/predict.json.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

BATCH = 256  # src.predict: max(train.batch_size, 256)


# ------------------------------------------------------------------ raw layouts (symlinks to the shared data)
def cifar_layout(raw: Path, dest: Path, n_train: int) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    labels = (raw / "trainLabels.csv").read_text().splitlines()
    (dest / "trainLabels.csv").write_text("\n".join(labels[:n_train + 1]) + "\n")
    for i in range(1, n_train + 1):
        (dest / "train" / f"{i}.png").symlink_to(raw / "train" / f"{i}.png")
    for f in (raw / "test").iterdir():
        (dest / "test" / f.name).symlink_to(f)
    (dest / "sampleSubmission.csv").symlink_to(raw / "sampleSubmission.csv")
    return dest


def overrides(dataset: str, raw: Path, processed: Path) -> list[str]:
    return [f"dataset={dataset}", f"dataset.raw_dir={raw}", f"paths.processed={processed}", "prepare.preview=false"]


# ------------------------------------------------------------------ children
def child_prepare(args) -> dict:
    from src import prepare
    from src.config import compose
    from src.files import read_json

    shutil.rmtree(args.processed / "cifar10", ignore_errors=True)
    t0 = time.perf_counter()
    lay = prepare.run(compose(overrides("cifar10", args.raw, args.processed)))
    dt = time.perf_counter() - t0
    rep = read_json(lay.report)
    n = rep["train_images"] + rep["val_images"] + rep["test_images"]
    return {"images": n, "test_images": rep["test_images"], "seconds": dt, "img_s": n / dt,
            "peak_rss_parent_mb": bu.peak_rss_mb()}


class _Memory:
    """A Keras predict callback: resident memory every few batches."""

    def __init__(self, every: int):
        import keras

        outer = self

        class CB(keras.callbacks.Callback):
            def on_predict_batch_end(self, batch, logs=None):
                if batch % every == 0:
                    outer.samples.append({"batch": batch, "rss_mb": round(bu.rss_mb(), 1),
                                          **{k: round(v, 1) for k, v in bu.anon_rss_mb().items()}})

        self.samples: list[dict] = []
        self.callback = CB()


def child_predict(args) -> dict:
    import keras

    from src import manifests
    from src.config import compose
    from src.data import test_dataset
    from src.inference import predict_proba
    from src.models import build_model
    from src.paths import Layout

    keras.config.set_dtype_policy("float32")
    cfg = compose([f"dataset={args.dataset_name}", f"paths.processed={args.processed}"]
                  + ([f"model={args.model}"] if args.model != "tiny" else []))
    m = manifests.load(Layout(cfg))
    if args.limit:
        m.test = m.test.head(args.limit).reset_index(drop=True)
    if args.model == "tiny":
        model = keras.Sequential([keras.Input(m.image_shape), keras.layers.Rescaling(1 / 255),
                                  keras.layers.GlobalAveragePooling2D(),
                                  keras.layers.Dense(m.num_classes, activation="softmax")])
    else:
        model = build_model(cfg.model, m.image_shape, m.num_classes, cfg.augment, 0)
    mem = _Memory(every=max(1, len(m.test) // BATCH // 20))
    rss_before = bu.rss_mb()
    anon_before = bu.anon_rss_mb()
    t0 = time.perf_counter()
    orig = model.predict
    model.predict = lambda ds, **kw: orig(ds, callbacks=[mem.callback], **kw)
    p = predict_proba(model, lambda flip: test_dataset(m, BATCH, flip=flip), False)
    dt = time.perf_counter() - t0
    after = {"rss_mb": round(bu.rss_mb(), 1), **{k: round(v, 1) for k, v in bu.anon_rss_mb().items()}}
    assert len(p) == len(m.test) and np.isfinite(p).all()
    return {"images": len(m.test), "image_shape": list(m.image_shape), "model": args.model, "seconds": dt,
            "img_s": len(m.test) / dt, "rss_before_mb": round(rss_before, 1), "anon_before": anon_before,
            "peak_rss_mb": bu.peak_rss_mb(), "samples": mem.samples, "after_predict": after, "params": int(model.count_params())}


def make_stream(src_npy: Path, dest: Path, n: int, train_npy: Path) -> Path:
    """A processed folder whose test.npy holds n 32x32x3 images (the real test images, tiled)."""
    import pandas as pd

    dest.mkdir(parents=True, exist_ok=True)
    src = np.load(src_npy, mmap_mode="r")
    out = np.lib.format.open_memmap(dest / "test.npy", mode="w+", dtype=np.uint8, shape=(n, *src.shape[1:]))
    for s in range(0, n, len(src)):
        k = min(len(src), n - s)
        out[s:s + k] = src[:k]
    out.flush()
    del out
    pd.DataFrame({"id": np.arange(1, n + 1), "path": [f"test/{i}.png" for i in range(1, n + 1)],
                  "index": np.arange(n), "ok": True}).to_csv(dest / "test.csv", index=False)
    shutil.copy(train_npy, dest / "train.npy")
    shutil.copy(train_npy.parent / "train.csv", dest / "train.csv")
    shutil.copy(train_npy.parent / "classes.json", dest / "classes.json")
    return dest


# ------------------------------------------------------------------ parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cifar-raw", type=Path, default=bu.SHARED_DATA / "cifar10")
    ap.add_argument("--dvc-raw", type=Path, default=bu.SHARED_DATA / "dogs_vs_cats")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kagglepipe-bench/predict"))
    ap.add_argument("--cifar-images", type=int, default=2048, help="CIFAR test images to predict (10000: all)")
    ap.add_argument("--stream-images", type=int, default=300_000)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: prepare_cifar,cifar,dvc,stream")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--what", help=argparse.SUPPRESS)
    ap.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--processed", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dataset-name", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        bu.emit(child_prepare(a) if a.what == "prepare" else child_predict(a))
        return

    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    info = {"machine": bu.machine(), "versions": bu.versions("numpy", "PIL", "tensorflow", "keras")}
    print(f"predict benchmark: {info['machine']['cpu_count']} cores, load {info['machine']['load_avg']}")
    t_all = time.perf_counter()
    results: dict = {}
    cifar_raw = cifar_layout(a.cifar_raw, a.work / "raw-cifar10", 1000)
    cifar_proc = a.work / "processed"
    if "prepare_cifar" not in skip or not (cifar_proc / "cifar10" / "test.npy").is_file():
        r = bu.run_child(__file__, ["--what", "prepare", "--raw", str(cifar_raw), "--processed", str(cifar_proc)],
                         monitor=True)
        results["prepare_cifar"] = r
        print(f"  prepare cifar10 ({r['images']} PNGs, {r['test_images']} test): {r['img_s']:,.0f} img/s, "
              f"peak RSS {r['peak_rss_total_mb']:.0f} MB (tree)  load {bu.load()[0]}")

    def predict(name: str, dataset: str, processed: Path, model: str, limit: int = 0) -> None:
        r = bu.run_child(__file__, ["--what", "predict", "--processed", str(processed), "--dataset-name", dataset,
                                    "--model", model, "--limit", str(limit)], timeout=900)
        r["load_avg_after"] = bu.load()
        results[name] = r
        print(f"  {name:14s} {r['images']:7d} images {r['img_s']:9,.0f} img/s  peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(before predict {r['rss_before_mb']:.0f})  load {r['load_avg_after'][0]}")

    if "cifar" not in skip:
        predict("cifar_predict", "cifar10", cifar_proc, "resnet_cifar", a.cifar_images)
    if "dvc" not in skip:
        from src import prepare
        from src.config import compose

        dvc_proc = a.work / "processed"
        prepare.run(compose(overrides("dogs_vs_cats", a.dvc_raw, dvc_proc)))
        predict("dvc_predict", "dogs_vs_cats", dvc_proc, "seed_cnn")
    if "stream" not in skip:
        stream_root = a.work / "stream"
        try:
            t0 = time.perf_counter()
            make_stream(cifar_proc / "cifar10" / "test.npy", stream_root / "cifar10", a.stream_images,
                        cifar_proc / "cifar10" / "train.npy")
            size_mb = (stream_root / "cifar10" / "test.npy").stat().st_size / 2**20
            print(f"  wrote a {a.stream_images:,}-image test.npy ({size_mb:.0f} MB) in {time.perf_counter() - t0:.0f}s")
            predict("stream", "cifar10", stream_root, "tiny")
            results["stream"]["test_npy_mb"] = round(size_mb, 1)
        finally:
            shutil.rmtree(stream_root, ignore_errors=True)

    rows = []
    for name, r in results.items():
        s = r.get("samples") or []
        anon = [x.get("RssAnon") for x in s if x.get("RssAnon") is not None]
        rows.append({"what": name, "images": r["images"], "img_s": r["img_s"], "seconds": r["seconds"],
                     "peak_rss_mb": r.get("peak_rss_total_mb", r.get("peak_rss_mb")),
                     "rss_before_mb": r.get("rss_before_mb"),
                     "rss_first_sample_mb": s[0]["rss_mb"] if s else None,
                     "rss_last_sample_mb": s[-1]["rss_mb"] if s else None,
                     "anon_growth_mb": (max(anon) - anon[0]) if anon else None})
    cols = [("what", "what"), ("images", "images"), ("img_s", "img/s"), ("seconds", "seconds"),
            ("peak_rss_mb", "peak RSS MB"), ("rss_before_mb", "RSS before predict MB"),
            ("rss_first_sample_mb", "RSS at first batch MB"), ("rss_last_sample_mb", "RSS at last batch MB")]
    print()
    print(bu.table(rows, cols))
    if "stream" in results:
        st = results["stream"]
        s = st["samples"]
        grow = s[-1]["rss_mb"] - s[0]["rss_mb"]
        print(f"\nstream: {st['images']:,} images ({st['test_npy_mb']:.0f} MB on disk) at {st['img_s']:,.0f} img/s; "
              f"RSS {s[0]['rss_mb']:.0f} MB at the first batch, {s[-1]['rss_mb']:.0f} MB at the last "
              f"({grow:+.0f} MB), peak {st['peak_rss_mb']:.0f} MB")
    info["machine"]["load_avg_end"] = bu.load()
    print(f"load average at the end: {info['machine']['load_avg_end']}  ({time.perf_counter() - t_all:.0f}s in all)")
    out = bu.write_result("predict", {**info, "batch_size": BATCH, "summary": rows, "results": results}, a.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
