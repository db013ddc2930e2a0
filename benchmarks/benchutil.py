"""Small helpers shared by the benchmark scripts: machine description, memory, child runs, tables, results.

Each measurement that reports memory runs in its own child process (`<script> --child ...`), so its peak
RSS is its own and not what an earlier measurement left behind.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
PY = sys.executable

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    """Where and when: cores, load average (1, 5, 15 min), versions."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_avg": load(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


def versions(*modules: str) -> dict[str, str]:
    out = {}
    for name in modules:
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            out[name] = "not installed"
    return out


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far: VmHWM from /proc/self/status. (getrusage's ru_maxrss
    is no good in a child process: it keeps the parent's RSS at the fork, across the exec.)"""
    hwm = anon_rss_mb().get("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_rss_mb() -> dict[str, float]:
    """RssAnon / RssFile of this process (/proc/self/status): anonymous memory versus mapped file pages."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(("RssAnon:", "RssFile:", "VmHWM:")):
                    k, v = ln.split(":", 1)
                    out[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return out


def _anon_mb(pid: int) -> float:
    """RssAnon of a process: its resident memory that is not mapped file pages (page cache) or shared."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("RssAnon:"):
                    return int(ln.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeMemory:
    """Samples the RSS of a process and all its descendants (e.g. a prepare run and its pool workers).

    Reports the peak of the summed RSS (an upper bound: pages shared between forked workers count
    once per process, and pages of memory-mapped files count too), the parent's peak, the largest single
    worker's peak, and the peak of the summed RssAnon (anonymous memory only: what the processes
    allocate, without the page cache of files they map).
    """

    def __init__(self, pid: int, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_total = self.peak_parent = self.peak_worker = self.peak_anon = 0.0
        self.max_workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                parent = self.proc.memory_info().rss / 2**20
                anon = _anon_mb(self.proc.pid)
                kids = []
                for c in self.proc.children(recursive=True):
                    try:
                        kids.append(c.memory_info().rss / 2**20)
                        anon += _anon_mb(c.pid)
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_parent = max(self.peak_parent, parent)
            self.peak_worker = max([self.peak_worker, *kids])
            self.peak_total = max(self.peak_total, parent + sum(kids))
            self.max_workers = max(self.max_workers, len(kids))
            time.sleep(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        return {"peak_rss_total_mb": round(self.peak_total, 1), "peak_rss_parent_mb": round(self.peak_parent, 1),
                "peak_rss_largest_worker_mb": round(self.peak_worker, 1), "workers_seen": self.max_workers,
                "peak_anon_total_mb": round(self.peak_anon, 1)}


def child_env() -> dict[str, str]:
    """A measured child's environment: TensorFlow's start-up chatter off, output unbuffered."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def communicate(proc: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    """A child's (stdout, stderr); killed, with the tail of what it said, when it runs past `timeout` seconds."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"{what} timed out after {timeout}s:\n{(err or out or '')[-3000:]}")


def run_child(script: str | Path, args: list[str], timeout: int = 600, monitor: bool = False) -> dict[str, Any]:
    """Run `python <script> --child <args>`; it prints one line `RESULT <json>` last. monitor=True adds
    the process tree's sampled memory (TreeMemory) to the result."""
    cmd = [PY, str(script), "--child", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    mem = TreeMemory(proc.pid) if monitor else None
    if mem:
        mem.__enter__()
    try:
        out, err = communicate(proc, timeout, " ".join(cmd))
    finally:
        if mem:
            mem.__exit__()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode})\n{out[-2000:]}\n{err[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if mem:
        result.update(mem.summary())
    return result


def emit(result: dict[str, Any]) -> None:
    """A child's last output line: its result as JSON."""
    print("RESULT " + json.dumps(result, default=float), flush=True)


def table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
    """A Markdown table of rows (dicts) with (key, header) columns; floats get sensible rounding."""

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
        return str(v)

    head = "| " + " | ".join(h for _, h in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_result(name: str, obj: dict[str, Any], out: str | Path | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    return path


def check(ok: bool, what: str, failures: list[str]) -> str:
    if not ok:
        failures.append(what)
    return ("ok   " if ok else "FAIL ") + what


def gpu_name(devices: list[str] | None = None) -> str:
    """h100, h200, a100, ... from nvidia-smi; 'gpu' for another accelerator, 'cpu' without one."""
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10).stdout.strip().splitlines()[0]
        for tag in ("H200", "H100", "A100", "L40S", "L4", "A10G", "V100", "T4"):
            if tag in name:
                return tag.lower()
        return "gpu"
    except Exception:
        return "gpu" if devices else "cpu"


def link_kaggle_tree(raw: Path, dest: Path, n_per_class: int | None, n_test: int | None, copies: int = 1) -> Path:
    """A Kaggle-layout folder of symlinks: the first n_per_class cats and dogs (copies > 1: each photo again
    under new numbers), the first n_test test photos and a matching sample_submission.csv."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    per_class: dict[str, list[Path]] = {"cat": [], "dog": []}
    for p in sorted((raw / "train").iterdir(), key=lambda q: (q.name.split(".")[0], int(q.name.split(".")[1]))):
        per_class[p.name.split(".")[0]].append(p)
    for cls, files in per_class.items():
        files = files[:n_per_class] if n_per_class else files
        span = max(int(f.name.split(".")[1]) for f in files) + 1
        for k in range(copies):
            for f in files:
                (dest / "train" / f"{cls}.{int(f.name.split('.')[1]) + k * span}.jpg").symlink_to(f)
    tests = sorted((raw / "test").iterdir(), key=lambda q: int(q.stem))
    tests = tests[:n_test] if n_test else tests
    for f in tests:
        (dest / "test" / f.name).symlink_to(f)
    (dest / "sample_submission.csv").write_text("id,label\n" + "".join(f"{f.stem},0.5\n" for f in tests))
    return dest


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished (reaped) children, e.g. prepare's pool workers."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
