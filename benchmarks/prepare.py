"""Prepare throughput and memory (issue 7): the project's prepare stage versus a plain Pillow loop.

    .venv/bin/python benchmarks/prepare.py              # ~1 minute on 2 cores
    .venv/bin/python benchmarks/prepare.py --big        # also 8,508 images (each photo linked 4 times)
    .venv/bin/python benchmarks/prepare.py --repeat 3   # median of 3 rounds (a quiet machine)

Same files, same run, each measurement in its own process:

  plain            single-process loop over the raw files: Image.open, convert("RGB"), resize((150, 150))
                   (Pillow's default filter, bicubic), save as JPEG into a temporary folder
  plain_nosave     the same loop without the save (into a list of arrays): the bare decode + resize work
  project          src.prepare.prepare() on the same raw folder, all cores (prepare.workers=0): scan, parallel
                   decode (JPEG draft mode) + resize into train.npy/test.npy, manifests, report, preview
  project_1worker  the same with prepare.workers=1 (no pool): the per-image speed-up alone
  project_small    the project on 500 training + 100 test photos: memory must not grow with the image count
  project_big      (--big) the project on 8,008 training (every photo linked 4 times) + 500 test photos

Peak memory of a project run is sampled every 20 ms over the process and its pool workers (summed RSS, an
upper bound since forked workers share pages), summed RssAnon, and VmHWM (parent) / getrusage (largest worker).
Writes benchmarks/results/prepare.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchutil as bu  # noqa: E402

SIZE = 150
TARGET = 4.0


# ------------------------------------------------------------------ raw folders (symlinks to the shared photos)
def raw_files(raw: Path) -> list[str]:
    return [str(p) for sub in ("train", "test") for p in sorted((raw / sub).iterdir())]


# ------------------------------------------------------------------ children
def child_plain(raw: Path, save: bool) -> dict:
    from PIL import Image

    files = raw_files(raw)
    out = Path(tempfile.mkdtemp(prefix="kagglepipe-plain-"))
    keep = []
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for i, f in enumerate(files):
            im = Image.open(f).convert("RGB").resize((SIZE, SIZE))
            if save:
                im.save(out / f"{i}.jpg")
            else:
                import numpy as np

                keep.append(np.asarray(im))
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"images": len(files), "seconds": dt, "img_s": len(files) / dt, "cpu_seconds": cpu,
            "img_cpu_s": len(files) / cpu, "peak_rss_mb": bu.peak_rss_mb()}


def child_project(raw: Path, processed: Path, workers: int) -> dict:
    import resource

    from src import prepare
    from src.config import compose
    from src.files import read_json

    shutil.rmtree(processed, ignore_errors=True)
    cfg = compose(["dataset=dogs_vs_cats", f"dataset.raw_dir={raw}", f"paths.processed={processed}",
                   f"prepare.workers={workers}"])
    t0, c0 = time.perf_counter(), bu.cpu_seconds()
    lay = prepare.run(cfg)
    dt, cpu_s = time.perf_counter() - t0, bu.cpu_seconds() - c0
    rep = read_json(lay.report)
    n = rep["train_images"] + rep["val_images"] + rep["test_images"] + rep["skipped_count"]
    res = {"images": n, "seconds": dt, "img_s": n / dt, "cpu_seconds": cpu_s, "img_cpu_s": n / cpu_s,
           "workers": workers or os.cpu_count(),
           "skipped": rep["skipped_count"], "peak_rss_parent_vmhwm_mb": bu.peak_rss_mb(),
           "peak_rss_largest_worker_getrusage_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
           "train_npy_mb": round(lay.train_images.stat().st_size / 2**20, 1)}
    shutil.rmtree(processed, ignore_errors=True)
    return res


# ------------------------------------------------------------------ parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--raw", type=Path, default=bu.SHARED_DATA / "dogs_vs_cats")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kagglepipe-bench/prepare"))
    ap.add_argument("--big", action="store_true", help="also run on 8,508 images (each training photo 4 times)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--what", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        if a.what in ("plain", "plain_nosave"):
            bu.emit(child_plain(a.raw, save=a.what == "plain"))
        else:
            bu.emit(child_project(a.raw, a.work / f"processed-{a.what}", a.workers))
        return

    info = {"machine": bu.machine(), "versions": bu.versions("numpy", "PIL")}
    print(f"prepare benchmark: {info['machine']['cpu_count']} cores, load {info['machine']['load_avg']}")
    t_all = time.perf_counter()
    raws = {"full": a.raw, "small": bu.link_kaggle_tree(a.raw, a.work / "raw-small", 250, 100)}
    if a.big:
        raws["big"] = bu.link_kaggle_tree(a.raw, a.work / "raw-big", None, None, copies=4)
    plan = [("plain", "full", 0), ("project", "full", 0), ("plain_nosave", "full", 0), ("project_1worker", "full", 1),
            ("project_small", "small", 0)]
    if a.big:
        plan.append(("project_big", "big", 0))
    rounds = []
    for r in range(a.repeat):
        res = {}
        for what, raw, workers in plan:
            out = bu.run_child(__file__, ["--what", what, "--raw", str(raws[raw]), "--work", str(a.work),
                                          "--workers", str(workers)], monitor=what.startswith("project"))
            out["raw"] = raw
            out["load_avg_after"] = bu.load()
            res[what] = out
            mem = out.get("peak_rss_total_mb", out.get("peak_rss_mb"))
            print(f"  round {r + 1} {what:16s} {out['images']:6d} images {out['img_s']:7,.0f} img/s   "
                  f"peak RSS {mem:6.0f} MB   load {out['load_avg_after'][0]}")
        rounds.append(res)

    rows = []
    for what, raw, workers in plan:
        row = dict(rounds[-1][what])
        for k in ("img_s", "seconds", "img_cpu_s", "peak_rss_total_mb", "peak_rss_mb", "peak_anon_total_mb"):
            vals = [rd[what][k] for rd in rounds if k in rd[what]]
            if vals:
                row[k] = statistics.median(vals)
        row["variant"] = what
        rows.append(row)
    by = {r["variant"]: r for r in rows}
    for row in rows:
        row["vs_plain"] = row["img_s"] / by["plain"]["img_s"]
        row["vs_plain_nosave"] = row["img_s"] / by["plain_nosave"]["img_s"]
        row["cpu_vs_plain"] = row["img_cpu_s"] / by["plain"]["img_cpu_s"]
        row["memory_mb"] = row.get("peak_rss_total_mb", row.get("peak_rss_mb"))
    cols = [("variant", "variant"), ("images", "images"), ("img_s", "img/s"), ("vs_plain", "vs plain loop"),
            ("vs_plain_nosave", "vs plain, no save"), ("img_cpu_s", "img/CPU-s"), ("cpu_vs_plain", "per CPU-s vs plain"),
            ("memory_mb", "peak RSS MB (tree)"), ("peak_anon_total_mb", "peak anon MB (tree)"),
            ("peak_rss_parent_mb", "parent MB"), ("peak_rss_largest_worker_mb", "largest worker MB"),
            ("workers", "workers")]
    print()
    print(bu.table(rows, cols))
    ratio = by["project"]["vs_plain"]
    print(f"\n{'met   ' if ratio >= TARGET else 'MISSED'} project (all cores) vs plain Pillow loop: {ratio:.1f}x "
          f"wall clock (target {TARGET:g}x); per CPU-second {by['project']['cpu_vs_plain']:.1f}x, so on "
          f"{os.cpu_count()} idle cores about {by['project']['cpu_vs_plain'] * os.cpu_count():.1f}x")
    small, full = by["project_small"], by["project"]
    growth = full["memory_mb"] / small["memory_mb"]
    anon_growth = full["peak_anon_total_mb"] / small["peak_anon_total_mb"]
    print(f"memory: {small['images']} images -> {small['memory_mb']:.0f} MB, {full['images']} images -> "
          f"{full['memory_mb']:.0f} MB ({growth:.2f}x for {full['images'] / small['images']:.1f}x the images)"
          + (f", {by['project_big']['images']} images -> {by['project_big']['memory_mb']:.0f} MB" if a.big else "")
          + f"; anonymous memory (without mapped file pages) {small['peak_anon_total_mb']:.0f} -> "
          f"{full['peak_anon_total_mb']:.0f} MB ({anon_growth:.2f}x)")
    info["machine"]["load_avg_end"] = bu.load()
    print(f"load average at the end: {info['machine']['load_avg_end']}  ({time.perf_counter() - t_all:.0f}s in all)")
    out = bu.write_result("prepare", {**info, "image_size": SIZE, "repeat": a.repeat, "summary": rows,
                                      "target": {"ratio": ratio, "target": TARGET, "met": ratio >= TARGET},
                                      "memory_growth": growth, "anon_memory_growth": anon_growth,
                                      "rounds": rounds}, a.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
