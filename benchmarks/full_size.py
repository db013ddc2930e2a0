"""Full size (issue 20): a Kaggle-size Dogs vs Cats and a Kaggle-size CIFAR-10 test folder through the normal commands.

    nice -n 5 .venv/bin/python benchmarks/full_size.py                  # full size and half size (~30-40 min, 2 cores)
    .venv/bin/python benchmarks/full_size.py --scale 0.02 --sizes 1     # a quick try (2% of the sizes below)

Builds under a temporary folder (--workdir, deleted at the end unless --keep):
  dogs_vs_cats/   25,000 training JPEGs (cat.0..12499, dog.0..12499) and 12,500 test JPEGs, each made from one of
                  the shared photos (../shared/data/dogs_vs_cats) by a random crop (60-100% of each side), a random
                  horizontal flip, a random rescale and a JPEG re-encode at a random quality: no two files are equal
                  (checked by sha256), + sample_submission.csv
  cifar10/        train/ -> the shared 50,000 training PNGs (a symlink) + trainLabels.csv; test/: the shared
                  10,000 test PNGs under random ids among 1..300,000 and 290,000 decoys (shared training images
                  flipped, shifted and colour-jittered, each distinct), + sampleSubmission.csv
and the same at half the image counts (symlinks to the first half), so memory can be compared at two sizes.

Then, for each dataset and size, runs `python -m src.prepare`, `src.train` (1 epoch on a train.subset, a small
ResNet; train also predicts every validation and test image), `src.evaluate` and `src.predict` in subprocesses, as
a user would, tracked in an MLflow store in the work folder. Each stage's process tree is sampled with psutil
(benchutil.TreeMemory): wall time, images/s, peak RSS of the stage's process, of the tree (prepare's workers
together) and its anonymous memory (RSS without mapped file pages: the page cache of train.npy/test.npy that the
kernel can drop). Also disk used per folder and every CSV's row count (checked against the image counts), and
CIFAR-10's accuracy on the 10,000 real test images (test_labels_for_benchmarks.csv, benchmarks only).
Writes benchmarks/results/full_size.json.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

DOGS = bu.SHARED_DATA / "dogs_vs_cats"
CIFAR = bu.SHARED_DATA / "cifar10"
FULL = {"dogs_train_per_class": 12_500, "dogs_test": 12_500, "cifar_test": 300_000}
# A small ResNet: the benchmark measures the pipeline at full size, not a network's accuracy.
MODEL = ["model=resnet_small", "model.stem_width=8", "model.widths=[8,16]", "model.blocks=[1,1]", "model.dropout=0.0"]


# ------------------------------------------------------------------ making the raw folders
def _jitter_jpeg(job: tuple[str, str, int]) -> str:
    """One new JPEG from a shared photo: random crop, flip, rescale, quality; returns its sha256."""
    from PIL import Image, ImageOps

    src, dst, seed = job
    rng = np.random.default_rng(seed)
    with Image.open(src) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        im = im.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            im = ImageOps.mirror(im)
        scale = rng.uniform(0.7, 1.1)
        im = im.resize((max(16, int(cw * scale)), max(16, int(ch * scale))), Image.Resampling.BILINEAR)
        im.save(dst, "JPEG", quality=int(rng.integers(70, 96)))
    return hashlib.sha256(Path(dst).read_bytes()).hexdigest()


def _decoy_png(job: tuple[str, str, int]) -> str:
    """A CIFAR-10 decoy from a shared training image: flipped, shifted (reflect), colour-jittered, with noise."""
    from PIL import Image

    src, dst, seed = job
    rng = np.random.default_rng(seed)
    x = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    dy, dx = rng.integers(-4, 5, size=2)
    x = np.roll(np.pad(x, ((4, 4), (4, 4), (0, 0)), mode="reflect"), (int(dy), int(dx)), axis=(0, 1))[4:36, 4:36]
    x = x * rng.uniform(0.7, 1.3, size=3) + rng.normal(0, 6, size=x.shape)
    Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(dst, "PNG")
    return hashlib.sha256(Path(dst).read_bytes()).hexdigest()


def _copy(job: tuple[str, str, int]) -> str:
    shutil.copyfile(job[0], job[1])
    return hashlib.sha256(Path(job[1]).read_bytes()).hexdigest()


def _run_jobs(fn, jobs: list[tuple[str, str, int]], workers: int) -> list[str]:
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        return pool.map(fn, jobs, chunksize=256)


def build_dogs(dest: Path, per_class: int, n_test: int, workers: int) -> dict:
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    sources = {c: sorted((DOGS / "train").glob(f"{c}.*.jpg")) for c in ("cat", "dog")}
    tests = sorted((DOGS / "test").glob("*.jpg"))
    jobs = [(str(sources[c][i % len(sources[c])]), str(dest / "train" / f"{c}.{i}.jpg"),
             (c == "dog") * 10**6 + i)
            for c in ("cat", "dog") for i in range(per_class)]
    jobs += [(str(tests[(i - 1) % len(tests)]), str(dest / "test" / f"{i}.jpg"), 10**7 + i) for i in range(1, n_test + 1)]
    t0 = time.perf_counter()
    digests = _run_jobs(_jitter_jpeg, jobs, workers)
    (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in range(1, n_test + 1)))
    return {"files": len(digests), "distinct": len(set(digests)), "seconds": round(time.perf_counter() - t0, 1)}


def build_cifar(dest: Path, n_test: int, workers: int, seed: int = 0) -> dict:
    """The shared 10,000 test PNGs under random ids among 1..n_test (all of them if n_test < 10,000), the rest
    decoys; the ids of the real ones are kept in real_ids.csv (real id -> new id) to score the submission."""
    (dest / "test").mkdir(parents=True)
    (dest / "train").symlink_to(CIFAR / "train")
    shutil.copyfile(CIFAR / "trainLabels.csv", dest / "trainLabels.csv")
    rng = np.random.default_rng(seed)
    real = min(10_000, n_test)
    new_ids = rng.permutation(np.arange(1, n_test + 1))
    real_new, decoy_new = new_ids[:real], new_ids[real:]
    jobs = [(str(CIFAR / "test" / f"{i + 1}.png"), str(dest / "test" / f"{int(n)}.png"), 0) for i, n in enumerate(real_new)]
    train_pngs = [str(CIFAR / "train" / f"{i}.png") for i in range(1, 50_001)]
    decoys = [(train_pngs[k % 50_000], str(dest / "test" / f"{int(n)}.png"), 2 * 10**6 + k) for k, n in enumerate(decoy_new)]
    t0 = time.perf_counter()
    digests = _run_jobs(_copy, jobs, workers) + _run_jobs(_decoy_png, decoys, workers)
    (dest / "real_ids.csv").write_text("real_id,id\n" + "".join(f"{i + 1},{int(n)}\n" for i, n in enumerate(real_new)))
    (dest / "sampleSubmission.csv").write_text("id,label\n" + "".join(f"{i},cat\n" for i in range(1, n_test + 1)))
    return {"files": len(digests), "distinct": len(set(digests)), "real": real, "seconds": round(time.perf_counter() - t0, 1)}


def half_tree(full: Path, dest: Path, dataset: str, counts: dict) -> None:
    """A raw folder of symlinks to the first half of `full`'s images (and a sample submission to match)."""
    (dest / "test").mkdir(parents=True)
    if dataset == "dogs_vs_cats":
        (dest / "train").mkdir()
        for c in ("cat", "dog"):
            for i in range(counts["dogs_train_per_class"]):
                (dest / "train" / f"{c}.{i}.jpg").symlink_to(full / "train" / f"{c}.{i}.jpg")
        n, sample, label = counts["dogs_test"], "sample_submission.csv", "0.5"
        ext = "jpg"
    else:
        (dest / "train").symlink_to(CIFAR / "train")
        shutil.copyfile(full / "trainLabels.csv", dest / "trainLabels.csv")
        n, sample, label, ext = counts["cifar_test"], "sampleSubmission.csv", "cat", "png"
        shutil.copyfile(full / "real_ids.csv", dest / "real_ids.csv")
    for i in range(1, n + 1):
        (dest / "test" / f"{i}.{ext}").symlink_to(full / "test" / f"{i}.{ext}")
    (dest / sample).write_text("id,label\n" + "".join(f"{i},{label}\n" for i in range(1, n + 1)))


# ------------------------------------------------------------------ running the stages
def overrides(base: Path, dataset: str, raw: Path, subset: int) -> list[str]:
    return [f"dataset={dataset}", f"dataset.raw_dir={raw}", f"paths.processed={base}/processed",
            f"paths.models={base}/models", f"paths.metrics={base}/metrics", f"paths.plots={base}/plots",
            f"paths.predictions={base}/predictions", f"paths.submissions={base}/submissions",
            f"tracking.uri=sqlite:///{base}/mlflow.db", "name=full", *MODEL, "train.epochs=1",
            f"train.subset={subset}", "train.batch_size=64", "augment=none"]


def run_stage(stage: str, args: list[str], timeout: int) -> dict:
    """`python -m src.<stage> args` with its process tree sampled; wall time, peak memory, its output's tail."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([bu.PY, "-m", f"src.{stage}", *args], cwd=bu.ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=bu.child_env())
    with bu.TreeMemory(proc.pid, interval=0.05) as mem:
        out, _ = bu.communicate(proc, timeout, f"src.{stage}")
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"src.{stage} failed (exit {proc.returncode}):\n{out[-4000:]}")
    return {"stage": stage, "seconds": round(seconds, 1), **mem.summary(),
            "output": [ln for ln in out.splitlines() if ln.startswith(f"{stage}:") or ln.startswith("train:")][-4:]}


def csv_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1


def du_mb(path: Path) -> float:
    """Disk used under a folder (allocated blocks; symlinks count as themselves, not their targets)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return round(total / 2**20, 1)


def pipeline(base: Path, dataset: str, raw: Path, subset: int, timeout: int) -> dict:
    """prepare -> train -> evaluate -> predict on one raw folder; per stage: time, images/s, memory."""
    from src.files import read_json

    args = overrides(base, dataset, raw, subset)
    stages = [run_stage(s, args, timeout) for s in ("prepare", "train", "evaluate", "predict")]
    proc = base / "processed" / dataset
    model_dir = base / "models" / dataset / "full"
    n_train, n_test = csv_rows(proc / "train.csv"), csv_rows(proc / "test.csv")
    run = read_json(model_dir / "run.json")
    n_val = csv_rows(model_dir / "predictions" / "val.csv")
    images = {"prepare": n_train + n_test, "train": n_val + n_test, "evaluate": n_val, "predict": n_test}
    for s in stages:
        s["images"] = images[s["stage"]]
        s["images_per_s"] = round(s["images"] / s["seconds"], 1)
    stages[1]["fit_seconds"] = run["fit_seconds"]
    stages[1]["trained_images"] = min(subset, n_train - n_val) if subset else n_train - n_val
    rows = {"processed/train.csv": n_train, "processed/test.csv": n_test, "predictions/val.csv": n_val,
            "predictions/test.csv": csv_rows(model_dir / "predictions" / "test.csv"),
            "plots/val_predictions.csv": csv_rows(base / "plots" / dataset / "full" / "val_predictions.csv"),
            "submission": csv_rows(base / "submissions" / f"{dataset}-full.csv")}
    disk = {"raw": du_mb(raw), "processed": du_mb(base / "processed"), "models": du_mb(base / "models"),
            "submissions": du_mb(base / "submissions"), "mlflow": du_mb(base / "mlruns") + du_mb_file(base / "mlflow.db")}
    return {"dataset": dataset, "stages": stages, "rows": rows, "disk_mb": disk,
            "metrics": {k: v for k, v in read_json(base / "metrics" / dataset / "full.json").items()
                        if k in ("val_log_loss", "val_accuracy", "n_val")}}


def du_mb_file(path: Path) -> float:
    return round(path.stat().st_blocks * 512 / 2**20, 1) if path.exists() else 0.0


def cifar_accuracy(raw: Path, submission: Path) -> dict:
    """The submission scored on the real test images only (their labels: benchmarks may read them)."""
    import pandas as pd

    real = pd.read_csv(raw / "real_ids.csv")
    truth = pd.read_csv(CIFAR / "test_labels_for_benchmarks.csv").rename(columns={"id": "real_id", "label": "truth"})
    sub = pd.read_csv(submission)
    joined = real.merge(truth, on="real_id").merge(sub, on="id")
    return {"scored_images": int(len(joined)), "accuracy": round(float((joined["label"] == joined["truth"]).mean()), 4)}


# ------------------------------------------------------------------ the report
COLS = [("size", "size"), ("dataset", "dataset"), ("stage", "stage"), ("images", "images"), ("seconds", "s"),
        ("images_per_s", "img/s"), ("peak_rss_parent_mb", "peak RSS MB"), ("peak_rss_total_mb", "tree RSS MB"),
        ("peak_anon_total_mb", "tree anon MB"), ("workers_seen", "workers")]


def report(results: list[dict]) -> str:
    rows = [{"size": r["size"], "dataset": r["dataset"], **s} for r in results for s in r["stages"]]
    lines = [bu.table(rows, COLS), ""]
    for r in results:
        lines.append(f"{r['size']} {r['dataset']}: rows {r['rows']}; disk MB {r['disk_mb']}; {r['metrics']}"
                     + (f"; real test images {r['real_test']}" if "real_test" in r else ""))
    return "\n".join(lines)


def growth(results: list[dict]) -> list[dict]:
    """Per dataset and stage: peak anonymous memory at full size / at half size."""
    by = {(r["size"], r["dataset"], s["stage"]): s for r in results for s in r["stages"]}
    out = []
    for (size, ds, stage), s in by.items():
        half = by.get(("half", ds, stage))
        if size == "full" and half:
            out.append({"dataset": ds, "stage": stage, "images": f"{half['images']} -> {s['images']}",
                        "anon_half_mb": half["peak_anon_total_mb"], "anon_full_mb": s["peak_anon_total_mb"],
                        "anon_ratio": round(s["peak_anon_total_mb"] / max(half["peak_anon_total_mb"], 1), 2),
                        "rss_half_mb": half["peak_rss_total_mb"], "rss_full_mb": s["peak_rss_total_mb"]})
    return out


def one_dataset(work: Path, ds: str, full: dict, sizes: list[float], a: argparse.Namespace, info: dict) -> list[dict]:
    """Build the dataset's raw folder at the largest size, then run the pipeline at every size (smaller sizes:
    symlinks to the first part of the largest)."""
    raw_full = work / "raw" / f"{ds}-full"
    print(f"building {raw_full} ...", flush=True)
    built = (build_dogs(raw_full, full["dogs_train_per_class"], full["dogs_test"], a.workers) if ds == "dogs_vs_cats"
             else build_cifar(raw_full, full["cifar_test"], a.workers))
    print(f"  {built}", flush=True)
    info[f"built_{ds}"] = built
    results = []
    for frac in sizes:
        name = "full" if frac == sizes[0] else ("half" if frac == sizes[0] / 2 else f"x{frac:g}")
        counts = {k: max(1, int(v * frac / sizes[0])) for k, v in full.items()}
        raw = raw_full if name == "full" else work / "raw" / f"{ds}-{name}"
        if raw != raw_full:
            half_tree(raw_full, raw, ds, counts)
        base = work / "out" / f"{ds}-{name}"
        print(f"running the pipeline on {raw} ...", flush=True)
        r = {"size": name, **pipeline(base, ds, raw, a.subset, a.timeout)}
        if ds == "cifar10":
            r["real_test"] = cifar_accuracy(raw, base / "submissions" / "cifar10-full.csv")
        results.append(r)
        print(report([r]), flush=True)
        shutil.rmtree(base / "processed", ignore_errors=True)  # keep the disk use down between runs
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the Kaggle image counts (1.0: full size)")
    ap.add_argument("--sizes", default="1,0.5", help="sizes to run, as fractions of --scale (default: full and half)")
    ap.add_argument("--datasets", default="dogs_vs_cats,cifar10")
    ap.add_argument("--subset", type=int, default=2000, help="train.subset: training images of the 1-epoch run")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that build the raw folders")
    ap.add_argument("--workdir", default=None, help="where to build everything (default: a new folder in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per stage")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    work = Path(a.workdir or tempfile.mkdtemp(prefix="kagglepipe-full-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted((float(s) for s in a.sizes.split(",")), reverse=True)
    info = {"machine": bu.machine(), "versions": bu.versions("tensorflow", "keras", "numpy", "PIL"),
            "command": " ".join(sys.argv), "scale": a.scale, "subset": a.subset,
            "disk_free_gb_before": round(shutil.disk_usage(work).free / 2**30, 1)}
    results: list[dict] = []
    try:
        full = {k: max(1, int(v * a.scale * sizes[0])) for k, v in FULL.items()}
        for ds in a.datasets.split(","):
            results += one_dataset(work, ds, full, sizes, a, info)
        info["disk_free_gb_min"] = round(shutil.disk_usage(work).free / 2**30, 1)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["load_avg_end"] = bu.load()
    out = {**info, "results": results, "memory_growth": growth(results)}
    print(report(results))
    if out["memory_growth"]:
        print(bu.table(out["memory_growth"], [("dataset", "dataset"), ("stage", "stage"), ("images", "images"),
                                               ("anon_half_mb", "anon MB half"), ("anon_full_mb", "anon MB full"),
                                               ("anon_ratio", "ratio"), ("rss_half_mb", "RSS MB half"),
                                               ("rss_full_mb", "RSS MB full")]))
    print(f"wrote {bu.write_result('full_size', out, a.out)}")


if __name__ == "__main__":
    main()
