"""The one entry wrapper every command goes through: `python -m src.<stage> [overrides]`.

It composes the config with Hydra (a composition mistake becomes one line, exit 2), checks the config before any
work (src/config.py), turns SIGTERM into Ctrl-C so that runs unwind and end KILLED in MLflow, and maps the
outcome to an exit status: 0 done, 2 a user mistake (one line: `error: ...`), 130 Ctrl-C, 143 SIGTERM.
A pipeline stage runs through src/pipeline.py, which first brings the stages before it up to date.
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Any, Callable

from omegaconf import DictConfig

from . import interrupts, launchers
from .errors import UserError
from .paths import CONF_DIR


TRACKED = ("train", "evaluate", "predict", "blend")  # the stages that write to MLflow (before any of their work)


def main(stage: str, task: Callable[[DictConfig], Any] | None = None) -> None:
    """Run `stage` (a pipeline stage, or any named command with its own task) on the command line's config."""
    import hydra

    argv = sys.argv[1:]
    precheck_overrides(argv)
    multirun = bool({"-m", "--multirun"} & set(argv))
    if multirun:  # what a launcher or a Hydra callback raises reaches the handler below (not Hydra's report)
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def hydra_task(cfg: DictConfig) -> Any:
        return run(stage, cfg, task)

    try:
        hydra_task()
    except UserError as e:  # from a Hydra callback in the sweep's own process (src/tracking.py, SweepParentRun)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        said = launchers.failure(e) if multirun else None
        if said is None:
            raise
        print(f"error: {said[0]}", file=sys.stderr)
        sys.exit(said[1])


def run(stage: str, cfg: DictConfig, task: Callable[[DictConfig], Any] | None = None) -> Any:
    """One stage or command, with the entry's error handling (also what each job of a Hydra sweep runs)."""
    from . import config, multiprocess, pipeline

    try:
        with interrupts.raising():
            cfg = config.resolve_member(cfg)
            config.check(cfg, stage)
            if stage in TRACKED:
                from . import tracking

                tracking.check_server(cfg)  # a tracking server that is down: one line before any work
            result = task(cfg) if task is not None else pipeline.run(cfg, stage)
    except UserError as e:
        multiprocess.report("failed", str(e))  # the other processes of a multi-process job stop too
        print(f"error: {e}", file=sys.stderr)
        multiprocess.exit_process(2)
    except KeyboardInterrupt as e:
        term = "SIGTERM" in e.args
        multiprocess.report("failed", f"interrupted{' (SIGTERM)' if term else ''}")
        print(f"interrupted{' (SIGTERM)' if term else ''}", file=sys.stderr)
        multiprocess.exit_process(143 if term else 130)
    except BaseException as e:
        _failed_in_job(e)
        raise
    multiprocess.report("done")
    return result


def _failed_in_job(e: BaseException) -> None:
    """An unexpected error: the job's other processes are told; in a multi-process job this process then ends
    here (one line for a peer that died under a collective, else the traceback), never waiting at JAX's exit."""
    from . import multiprocess

    lost = multiprocess.lost_peer(e)
    multiprocess.report("failed", lost or (f"{type(e).__name__}: {e}".splitlines() or [""])[0][:300])
    if lost:
        print(f"error: {lost}", file=sys.stderr)
    elif multiprocess.joined():
        traceback.print_exc()
    else:
        return
    multiprocess.exit_process(1)


def precheck_overrides(argv: list[str]) -> None:
    """Compose the command line's overrides before Hydra runs the task: an unknown key, group option or a malformed
    override becomes one line on stderr and exit status 2 (Hydra itself prints several lines and a hint).

    Flags (-m/--multirun, --config-dir, --help, ...) are left to Hydra, which reports on them itself.
    """
    _refuse_fold_sweep(argv)
    try:
        launchers.check(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if any(a.startswith("-") for a in argv):
        return
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import compose

    try:
        compose(argv)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {quoting_hint(argv) or one_line(str(e)) + ' (groups and keys are in conf/)'}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def quoting_hint(argv: list[str]) -> str | None:
    """For the first override Hydra cannot parse, the same value quoted in Hydra's grammar, ready to paste (paths
    with ~ ( ) , = ' [ ] and the like need it; a value the shell split at its spaces is joined again); None when
    every override parses (the problem is elsewhere) or quoting would not help."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for i, arg in enumerate(argv):
        try:
            parser.parse_override(arg)
            continue
        except Exception as e:
            problem = one_line(str(e)).split("; See https")[0]
        if "=" not in arg and i > 0 and "=" in argv[i - 1]:  # the shell split "key=my big data" at its spaces
            words = itertools.takewhile(lambda a: "=" not in a, argv[i:])
            arg = " ".join([argv[i - 1], *words])
        if "=" not in arg:
            return None
        key, value = arg.split("=", 1)
        quoted = f"{key}={_hydra_quote(value)}"
        try:
            if parser.parse_override(quoted).value() != value:
                return None
        except Exception:
            return None
        shell = '"' + re.sub(r'([\\"$`])', r"\\\1", quoted) + '"'  # for a POSIX shell's double quotes
        return (f"{arg!r}: Hydra cannot read this override ({problem}); quote the value in Hydra's grammar, inside "
                f"the shell's quotes: {shell}  (see README, 'Configuration')")
    return None


def _hydra_quote(value: str) -> str:
    """A value as a quoted Hydra string (double quotes for a value with a ' in it): that quote escaped, and the
    backslashes before it or the end doubled."""
    q = '"' if "'" in value and '"' not in value else "'"
    escaped = re.sub(rf"(\\+)(?={q}|$)", lambda m: m.group(1) * 2, value).replace(q, "\\" + q)
    return f"{q}{escaped}{q}"


def _refuse_fold_sweep(argv: list[str]) -> None:
    """-m over cv.fold would name each fold's job apart (<name>-<job>), splitting one member into k."""
    if not {"-m", "--multirun"} & set(argv):
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides([a for a in argv if not a.startswith("-")])
    except Exception:  # a malformed override: Hydra reports it itself
        return
    if any(o.key_or_group == "cv.fold" and o.is_sweep_override() for o in overrides):
        print("error: cv.fold cannot be swept with -m (each job would be a member of its own); train every fold "
              "with cv.folds=k and no cv.fold (one job a member), or one fold per command with cv.fold=i",
              file=sys.stderr)
        sys.exit(2)


def one_line(message: str) -> str:
    """Hydra's multi-line composition errors as one line: the problem, then the options it lists."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    cut = next((i for i, ln in enumerate(lines) if ln.startswith("Config search path")), len(lines))
    out: list[str] = []
    for ln in lines[:cut]:
        if out and out[-1].endswith(":"):
            out[-1] += " " + ln
        elif out and out[-1].split(":")[0].startswith("Available options"):
            out[-1] += ", " + ln
        else:
            out.append(ln.rstrip("."))
    return "; ".join(out)
