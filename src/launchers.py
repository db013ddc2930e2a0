"""Hydra launchers for sweeps (`-m`): which one runs the jobs, whether its plugin is installed, and what its failures
mean, in one line.

    python -m src.train -m train.lr=1e-3,3e-4                              # basic: one job after the other
    python -m src.train -m hydra/launcher=joblib train.lr=1e-3,3e-4        # jobs in parallel on this machine
    python -m src.train -m hydra/launcher=submitit_slurm train.lr=1e-3,3e-4  # a SLURM job array
    python -m src.train -m hydra/launcher=submitit_local train.lr=1e-3,3e-4  # submitit's code path, locally

The launchers are Hydra's own plugins (hydra-joblib-launcher, hydra-submitit-launcher), configured in
conf/hydra/launcher/. Each job runs cli.run in its own process (joblib's loky workers, submitit's job processes)
and writes its outputs under its own name (<name>-<job number>, src/paths.py); the MLflow grouping is
src/tracking.py's SweepParentRun. A failing job stops the sweep (joblib stops the others at once; submitit waits
for the jobs already started) and the sweep's process ends with one line saying which job failed and why.
"""
from __future__ import annotations

import importlib.util
import re

from omegaconf import OmegaConf

from .errors import UserError
from .paths import CONF_DIR, PROJECT_ROOT

LAUNCHERS = CONF_DIR / "hydra" / "launcher"
BUILT_IN = ("basic",)


def chosen(argv: list[str]) -> str | None:
    """The hydra/launcher=<name> of a command line, if any."""
    for a in argv:
        m = re.fullmatch(r"(?:\+|\+\+)?hydra/launcher=(.*)", a)
        if m:
            return m.group(1)
    return None


def check(argv: list[str]) -> None:
    """The launcher named on the command line exists and its plugin is installed; else a one-line UserError."""
    name = chosen(argv)
    if name is None or name in BUILT_IN:
        return
    options = sorted(p.stem for p in LAUNCHERS.glob("*.yaml"))
    if name not in options:
        raise UserError(f"hydra/launcher={name} is not a launcher here; choose one of {', '.join([*BUILT_IN, *options])} "
                        "(conf/hydra/launcher/)")
    target = str(OmegaConf.load(LAUNCHERS / f"{name}.yaml")["_target_"])
    package = target.split(".")[1]  # hydra_plugins.<package>.<module>.<class>
    try:
        found = importlib.util.find_spec(f"hydra_plugins.{package}") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        dist = package.replace("_", "-")
        raise UserError(f"hydra/launcher={name} needs Hydra's launcher plugin {dist}, which is not installed; "
                        f"pip install {_pinned(dist)} (or leave hydra/launcher out: jobs then run one after another)")


def _pinned(dist: str) -> str:
    """dist==<version> as requirements.lock pins it (the plain name when it is not there)."""
    lock = PROJECT_ROOT / "requirements.lock"
    if lock.is_file():
        for line in lock.read_text().splitlines():
            if line.lower().startswith(f"{dist}=="):
                return line.strip()
    return dist


def failure(e: BaseException) -> tuple[str, int] | None:
    """A launcher's report that a job failed or died, as (one line, exit status); None for anything else (a bug
    keeps its traceback)."""
    kind = f"{type(e).__module__}.{type(e).__name__}"
    text = str(e)
    if kind.startswith("submitit.") and kind.endswith(("UncompletedJobError", "FailedJobError")):
        return _submitit_failure(text)
    if type(e).__name__ == "TerminatedWorkerError":  # joblib/loky: a worker process died (killed, out of memory)
        codes = re.search(r"exit codes of the workers are \{([^}]*)\}", text)
        return (f"a sweep job's process died (exit {codes.group(1) if codes else 'unknown'}: killed, e.g. out of "
                "memory); the other jobs were stopped and their MLflow runs end KILLED; rerun the sweep to resume them", 1)
    if isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutError":
        return ("a sweep job ran longer than hydra.launcher.timeout allows; the other jobs were stopped and their MLflow "
                "runs end KILLED; raise hydra.launcher.timeout (seconds) or rerun the sweep to resume them", 1)
    return None


def _submitit_failure(text: str) -> tuple[str, int]:
    """submitit's error holds the job's stderr or traceback and its log's path: the job's own `error:` line if it
    printed one (a user mistake, exit 2), else the last line of its traceback, else that it died without a word."""
    log = re.search(r"(\S+?)_(?:result\.pkl|log\.err)", text)
    job_id = re.search(r"(\d+(?:_\d+)?)_\d+$", log.group(1)) if log else None
    name = f"submitit job {job_id.group(1)}" if job_id else "a sweep job"
    where = f"; its log: {log.group(1)}_log.err" if log else ""
    said = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("error: ")]
    if said:
        return f"{name} failed: {said[-1][len('error: '):]}{where}", 2
    noise = ("- ", "You can check", "submitit ", "File ", "^", "Traceback", "Job ", "has not produced", "No error stream")
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not set(ln.strip()) <= {"-"} and not ln.strip().startswith(noise)]
    reason = lines[-1] if lines else "its process ended without a result (killed, or out of memory)"
    return f"{name} failed: {reason[:300]}{where}", 1
