"""Look at what the pipeline records, in a real browser: the MLflow UI served by `mlflow ui` on 127.0.0.1 and
headless Chromium, one screenshot per page, and a check that each page shows what it should.

    python scripts/mlflow_ui_check.py                       # a fresh demo store: 2 trained, evaluated, registered runs
    python scripts/mlflow_ui_check.py --store sqlite:///mlflow.db --experiment kagglepipe-dogs_vs_cats

Pages: the experiments list and the experiment's runs (the "Model training" view), the run's overview, its learning curve and ROC plot (or
confusion matrix), its MLflow Model (overview and files: MLmodel with the signature, the input example, the code)
and the registered model with its alias. (MLflow's own interactive metric charts are left out: they stay spinners
in Chromium's --virtual-time-budget rendering, which needs no driver; look at them in a normal browser.) Screenshots and
ui_check.json (each page's URL, the texts looked for, which were found) go to --out (outputs/mlflow_ui/); the
exit status is 1 when a page lacks one of its texts. Needs Chromium (Debian: apt-get install -y chromium) and
takes about a minute or two (the demo trains two tiny models; the server takes a while to start on a busy machine).

MLflow 3.17's UI opens experiments in its GenAI view unless told otherwise: a `workflowType=machine_learning` query
(used here, and in the README's link) or its "GenAI | Model training" switch (remembered by the browser) selects
the model-training view. The experiment tag mlflow.experimentKind=custom_model_development, which src/tracking.py
sets, is what earlier MLflow 3 releases read instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ["dataset=demo", "dataset.image_size=48", "dataset.demo.n_train_per_class=24", "dataset.demo.n_test=12",
        "train.epochs=3", "train.batch_size=16", "prepare.workers=1", "tracking.register=true"]
ML_VIEW = "workflowType=machine_learning"


def main() -> int:
    args = _arguments()
    browser = args.chromium or next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                                     if shutil.which(b)), None)
    if browser is None:
        print("error: no Chromium found; install it (Debian: apt-get install -y chromium) or name it with --chromium",
              file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kagglepipe-ui-") as tmp:
        store = args.store or _demo_store(Path(tmp))
        port = args.port or _free_port()
        server = _start_ui(store, port, Path(tmp) / "ui.log")
        try:
            pages = _pages(store, args.experiment, port)
            results = [_look(browser, name, url, texts, out) for name, url, texts in pages]
        finally:
            _stop(server)
    (out / "ui_check.json").write_text(json.dumps({"store": store, "pages": results}, indent=1))
    print("| page | found | missing | screenshot |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['page']} | {', '.join(r['found'])} | {', '.join(r['missing']) or '-'} | {r['screenshot']} |")
    return 1 if any(r["missing"] for r in results) else 0


def _arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="an MLflow tracking URI to look at (default: a fresh demo store)")
    p.add_argument("--experiment", default="kagglepipe-demo", help="the experiment to open")
    p.add_argument("--out", default=str(ROOT / "outputs" / "mlflow_ui"), help="where the screenshots go")
    p.add_argument("--port", type=int, default=0, help="the UI's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--chromium", help="the Chromium binary (default: found on PATH)")
    return p.parse_args()


def _demo_store(base: Path) -> str:
    """Two demo runs trained, evaluated and predicted into base (each a registered MLflow Model)."""
    uri = f"sqlite:///{base}/mlflow.db"
    paths = [f"paths.{k}={base}/{k}" for k in ("raw", "processed", "models", "metrics", "plots", "predictions",
                                                "submissions")]
    for name, extra in (("seed_cnn", []), ("seed_cnn_slow", ["train.lr=3e-4"])):
        for stage in ("train", "predict"):
            cmd = [sys.executable, "-m", f"src.{stage}", *DEMO, *paths, f"tracking.uri={uri}", f"name={name}", *extra,
                   f"hydra.run.dir={base}/hydra"]
            r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if r.returncode != 0:
                sys.exit(f"error: {' '.join(cmd[1:4])} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ui(store: str, port: int, log: Path, timeout: float = 300) -> subprocess.Popen:
    """`mlflow ui` on 127.0.0.1:port (its own process group, stopped as one), once it answers /health."""
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job workers: starts faster, fewer processes
    server = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"error: mlflow ui ended at once ({log.read_text().strip().splitlines()[-1:]})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    _stop(server)
    sys.exit(f"error: mlflow ui did not answer on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _stop(server: subprocess.Popen) -> None:
    """The server and every process it started (its own process group): asked to stop, then killed."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # workers that outlived it
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


def _pages(store: str, experiment: str, port: int) -> list[tuple[str, str, list[str]]]:
    """(name, URL, texts the page must show) for the experiment's newest run that has an MLflow Model."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(store)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"error: no experiment {experiment!r} in {store}; name one with --experiment")
    models = c.search_logged_models([exp.experiment_id], order_by=[{"field_name": "creation_time", "ascending": False}])
    if not models:
        sys.exit(f"error: no MLflow Model in {experiment}; evaluate a run with tracking.log_model=true first")
    model = models[0]
    run = c.get_run(model.source_run_id)
    arts = {a.path for a in c.list_artifacts(run.info.run_id, "plots")}
    plot = "plots/roc.png" if "plots/roc.png" in arts else "plots/confusion_matrix.png"
    registered = [v.name for v in c.search_model_versions(f"run_id = '{run.info.run_id}'")][:1]
    base, e, r = f"http://127.0.0.1:{port}/#", exp.experiment_id, run.info.run_id
    pages = [
        ("experiments", f"{base}/experiments?{ML_VIEW}", ["Model training", experiment]),  # the README's link
        ("runs", f"{base}/experiments/{e}?{ML_VIEW}", ["Model training", "Runs", run.info.run_name]),
        ("run", f"{base}/experiments/{e}/runs/{r}?{ML_VIEW}",
         [run.info.run_name, "Finished", "eval.val_log_loss", *registered]),
        ("learning_curve", f"{base}/experiments/{e}/runs/{r}/artifacts/plots/learning_curve.png?{ML_VIEW}",
         ["plots/learning_curve.png"]),
        ("plot", f"{base}/experiments/{e}/runs/{r}/artifacts/{plot}?{ML_VIEW}", [plot]),
        ("error_grid", f"{base}/experiments/{e}/runs/{r}/artifacts/plots/most_wrong.png?{ML_VIEW}",
         ["plots/most_wrong.png"]),
        ("model", f"{base}/experiments/{e}/models/{model.model_id}?{ML_VIEW}", [model.name, "Ready", *registered]),
        ("model_files", f"{base}/experiments/{e}/models/{model.model_id}/artifacts?{ML_VIEW}",
         ["MLmodel", "input_example.json", "mlflow_model.py", "requirements.txt"]),
    ]
    if registered:
        pages.append(("registry", f"{base}/models/{registered[0]}?{ML_VIEW}", [registered[0], "best"]))
    return pages


def _look(browser: str, name: str, url: str, texts: list[str], out: Path) -> dict:
    """Render the page in headless Chromium: a screenshot, and which of the texts its DOM holds."""
    shot = out / f"{name}.png"
    r = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1600,1100", "--virtual-time-budget=25000", f"--screenshot={shot}",
                        "--dump-dom", url], capture_output=True, text=True, timeout=180)
    found = [t for t in texts if t in r.stdout]
    return {"page": name, "url": url, "found": found, "missing": [t for t in texts if t not in found],
            "screenshot": str(shot)}


if __name__ == "__main__":
    sys.exit(main())
