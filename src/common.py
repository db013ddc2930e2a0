"""Shared plumbing for every stage: project paths, user-facing errors, atomic writes, config checks."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


class UserError(Exception):
    """A mistake the user can fix (bad path, bad config value, bad data). Printed as one line, exit 2."""


def project_path(p: str | os.PathLike) -> Path:
    """Resolve a configured path against the project root (absolute paths are kept)."""
    p = Path(os.path.expanduser(str(p)))
    return p if p.is_absolute() else PROJECT_ROOT / p


# ---------------------------------------------------------------- atomic writes
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    A kill or an error leaves `target` as it was (old content or absent), never half written.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix or "".join(target.suffixes[-2:]) or ".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
            raise UserError(f"{target}: no space left on device while writing it; free some disk space and run again "
                            "(earlier outputs are intact)") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------- config
MODELS = ("seed_cnn", "xception_small", "xception_mini", "resnet_cifar", "resnet_small", "airbench", "efficientnet_b0", "resnet50")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
RESIZE_MODES = ("stretch", "pad", "crop")
LAYOUTS = ("filename", "labels_csv")
SUBMISSIONS = ("probability", "class_name")
DISTRIBUTE = ("none", "data_parallel")


def _get(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # interpolation or missing value
        raise UserError(f"config key {key}: {e}".splitlines()[0]) from e


def _check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
    value = _get(cfg, key)
    if not ok(value):
        raise UserError(f"config error: {key}={value!r} is not allowed; expected {allowed} "
                        f"(fix it in conf/ or override it, e.g. {key}=...)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(values: tuple[str, ...]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in values), "one of " + ", ".join(values)


def validate_config(cfg: DictConfig) -> None:
    """Check types and ranges of the keys the stages use, before any work starts."""
    checks: list[tuple[str, Callable[[Any], bool], str]] = [
        ("dataset.name", lambda v: isinstance(v, str) and v != "", "a non-empty name"),
        ("dataset.image_size", lambda v: _is_int(v) and 8 <= v <= 1024, "an integer from 8 to 1024"),
        ("dataset.val_fraction", lambda v: _is_num(v) and 0 < v < 1, "a number strictly between 0 and 1"),
        ("dataset.split_seed", _is_int, "an integer"),
        ("dataset.resize", *_one_of(RESIZE_MODES)),
        ("dataset.layout", *_one_of(LAYOUTS)),
        ("dataset.submission", *_one_of(SUBMISSIONS)),
        ("dataset.classes", lambda v: v is not None and len(v) >= 2 and len(set(v)) == len(v),
         "a list of at least two distinct class names"),
        ("model.name", *_one_of(MODELS)),
        ("model.dropout", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("train.epochs", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("train.batch_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("train.lr", lambda v: _is_num(v) and v > 0, "a number > 0"),
        ("train.weight_decay", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
        ("train.label_smoothing", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("train.warmup_epochs", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
        ("train.ema_momentum", lambda v: v is None or (_is_num(v) and 0 < v < 1), "null or a number in (0, 1)"),
        ("train.optimizer", *_one_of(OPTIMIZERS)),
        ("train.schedule", *_one_of(SCHEDULES)),
        ("train.precision", *_one_of(PRECISIONS)),
        ("train.distribute", *_one_of(DISTRIBUTE)),
        ("train.early_stopping_patience", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
        ("train.subset", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = all)"),
        ("train.steps_per_execution", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
        ("train.tta", lambda v: isinstance(v, bool), "true or false"),
        ("train.fit_on_all", lambda v: isinstance(v, bool), "true or false"),
        ("augment.rotation", lambda v: _is_num(v) and 0 <= v <= 0.5, "a number in [0, 0.5]"),
        ("augment.zoom", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("augment.translate", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
        ("augment.flip", lambda v: isinstance(v, bool), "true or false"),
        ("augment.mixup", lambda v: v is None or (_is_num(v) and v >= 0), "a number >= 0 (0 = off)"),
        ("augment.cutmix", lambda v: v is None or (_is_num(v) and v >= 0), "a number >= 0 (0 = off)"),
        ("evaluate.clip", lambda v: v == "auto" or (_is_num(v) and 0 < v < 0.5), "auto or a number in (0, 0.5)"),
        ("evaluate.temperature", lambda v: v == "auto" or (_is_num(v) and 0.01 <= v <= 100),
         "auto or a number from 0.01 to 100 (1 = off)"),
        ("prepare.workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = every core)"),
        ("prepare.preview", lambda v: isinstance(v, bool), "true or false"),
        ("prepare.write_images", lambda v: isinstance(v, bool), "true or false"),
        ("train.resume", lambda v: isinstance(v, bool), "true or false"),
        ("tracking.enabled", lambda v: v is None or isinstance(v, bool), "true or false"),
        ("dataset.image_ext", lambda v: OmegaConf.is_list(v) and len(v) > 0 and all(isinstance(e, str) and e for e in v),
         "a non-empty list of file extensions, e.g. [jpg, jpeg]"),
    ]
    try:  # a broken interpolation anywhere (e.g. dataset.raw_dir=${nope}) fails here, not halfway through a stage
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"config error: {key}: {str(e).splitlines()[0]}; fix it in conf/ or override it") from e
    for key, ok, allowed in checks:
        _check(cfg, key, ok, allowed)
    positive_ints = (lambda v: OmegaConf.is_list(v) and len(v) > 0 and all(_is_int(w) and w > 0 for w in v),
                     "a non-empty list of positive integers, e.g. [32, 64]")
    model_keys: list[tuple[str, Callable[[Any], bool], str]] = [  # only some networks have them
        ("model.widths", *positive_ints),
        ("model.blocks", *positive_ints),
        ("model.stem_width", lambda v: _is_int(v) and v > 0, "a positive integer"),
        ("model.stem_kernel", lambda v: _is_int(v) and 1 <= v <= 11, "an integer from 1 to 11"),
        ("model.stem_strides", lambda v: v in (1, 2), "1 or 2"),
    ]
    for key, ok, allowed in model_keys:
        if OmegaConf.select(cfg, key, default=None) is not None:
            _check(cfg, key, ok, allowed)
    widths, blocks = OmegaConf.select(cfg, "model.widths"), OmegaConf.select(cfg, "model.blocks")
    if widths is not None and blocks is not None and len(widths) != len(blocks):  # one block count per stage
        raise UserError(f"config error: model.widths ({len(widths)} stages) and model.blocks ({len(blocks)} stages) "
                        "must have the same length")
    if str(_get(cfg, "dataset.layout")) == "labels_csv" and not _get(cfg, "dataset.labels_csv"):
        raise UserError("config error: dataset.labels_csv must name the labels CSV when dataset.layout=labels_csv")


def config_hash(cfg: DictConfig | dict, keys: list[str]) -> str:
    """A stable hash of the listed config keys (used to tell whether an output is still up to date)."""
    sub = {k: OmegaConf.to_container(OmegaConf.select(cfg, k), resolve=True)
           if isinstance(OmegaConf.select(cfg, k), DictConfig) or OmegaConf.is_list(OmegaConf.select(cfg, k))
           else OmegaConf.select(cfg, k) for k in keys}
    return hashlib.sha256(json.dumps(sub, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose the project config as the command line would (for tests and notebooks)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []), return_hydra_config=False)


def _one_line(message: str) -> str:
    """Hydra's multi-line composition errors as one line: the problem, then the options it lists."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if any(ln.startswith("Config search path") for ln in lines):
        lines = lines[:[i for i, ln in enumerate(lines) if ln.startswith("Config search path")][0]]
    out: list[str] = []
    for ln in lines:
        if out and out[-1].endswith(":"):
            out[-1] += " " + ln
        elif out and ":" in out[-1] and out[-1].split(":")[0].startswith("Available options"):
            out[-1] += ", " + ln
        else:
            out.append(ln.rstrip("."))
    return "; ".join(out)


def precheck_overrides(argv: list[str] | None = None) -> None:
    """Compose the command line's overrides before Hydra runs a stage: an unknown key, group option or a
    malformed override becomes one line on stderr and exit status 2 (Hydra itself prints several lines).

    Flags (-m/--multirun, --config-dir, --help, ...) are left to Hydra, which reports on them itself.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a.startswith("-") for a in argv):
        return
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        compose(argv)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {_one_line(str(e))} (groups and keys are in conf/)", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def run_name(cfg: DictConfig) -> str:
    """The run's name; sweep jobs get their job number appended so they never share outputs."""
    name = str(cfg.name)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            name = f"{name}-{hc.job.num}"
    except Exception:
        pass
    return name


# ---------------------------------------------------------------- stage layout
class Layout:
    """Where a stage reads and writes, derived from the config alone."""

    def __init__(self, cfg: DictConfig):
        ds = cfg.dataset.name
        name = run_name(cfg)
        self.name = name
        self.raw = project_path(cfg.dataset.raw_dir)
        self.processed = project_path(cfg.paths.processed) / ds
        self.model_dir = project_path(cfg.paths.models) / ds / name
        self.model = self.model_dir / "model.keras"
        self.checkpoint_dir = self.model_dir / "checkpoint"
        self.run_info = self.model_dir / "run.json"
        self.history = self.model_dir / "history.json"
        self.metrics = project_path(cfg.paths.metrics) / ds / f"{name}.json"
        self.plots = project_path(cfg.paths.plots) / ds / name
        self.submission = project_path(cfg.paths.submissions) / f"{ds}-{name}.csv"


# ---------------------------------------------------------------- CLI
def cli(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a stage's Hydra task: user mistakes become one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> Any:
        import signal

        _INTERRUPTS.clear()
        try:  # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C: MLflow runs end KILLED, temp files go
            prev = {s: signal.signal(s, interrupt_handler) for s in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:  # not the main thread
            prev = {}
        try:
            validate_config(cfg)
            return fn(cfg)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as e:
            term = "SIGTERM" in e.args
            print(f"interrupted{' (SIGTERM)' if term else ''}", file=sys.stderr)
            sys.exit(143 if term else 130)
        finally:
            for sig, handler in prev.items():
                signal.signal(sig, handler)

    return wrapper


_INTERRUPTS: list[str] = []


def interrupt_handler(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM -> KeyboardInterrupt, remembered: Python drops an exception raised inside a garbage-collector
    callback or __del__, so long loops call check_interrupted() to raise it again."""
    import signal

    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    _INTERRUPTS.append(name)
    raise KeyboardInterrupt(name)


def defer_interrupt(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM while TensorFlow runs: only remember it; the training loop stops at the next batch end and
    unwinds cleanly (an exception thrown through a running fit can abort TensorFlow). A second signal is immediate."""
    import signal

    if _INTERRUPTS:
        interrupt_handler(signum, frame)
    _INTERRUPTS.append("SIGTERM" if signum == signal.SIGTERM else "SIGINT")


def check_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C/SIGTERM arrived (even one that Python swallowed where it landed)."""
    if _INTERRUPTS:
        raise KeyboardInterrupt(_INTERRUPTS[-1])
