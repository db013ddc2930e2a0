"""Apply TF_CPP_MIN_LOG_LEVEL to what TensorFlow's C++ code logs while it is being imported.

TensorFlow 2.21 logs through Abseil, and a few messages are written before its logging is initialised
(e.g. "oneDNN custom operations are on" on CPUs with AVX-512, preceded by Abseil's "WARNING: All log messages
before absl::InitializeLog() is called are written to STDERR"); those ignore TF_CPP_MIN_LOG_LEVEL. On such a
machine every command would start its output with them, above the one-line error a user mistake deserves.

This hook captures file descriptor 2 while `tensorflow` is imported (wherever that first happens: keras,
src.data, ...) and writes back every line except the C++ log lines below the configured level and Abseil's
pre-initialisation notice. Nothing else is touched: Python warnings and errors raised during the import pass
through, in order. KAGGLEPIPE_TF_IMPORT_LOGS=1 turns the filter off.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_CPP_LOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\] ")
_CONTINUATION = re.compile(r"^(\s+\S|To enable the following instructions)")  # TensorFlow's multi-line records
_LEVEL = {"I": 0, "W": 1, "E": 2, "F": 3}


def filter_lines(text: str, min_level: int) -> str:
    """Drop Abseil's notice and C++ log records below min_level (0 INFO .. 3 FATAL), with their continuation lines
    (indented, or cpu_feature_guard's second line)."""
    out, dropping = [], False
    for line in text.splitlines(keepends=True):
        m = _CPP_LOG.match(line)
        if line.rstrip("\r\n") == _ABSL_NOTICE:
            dropping = False
            continue
        if m:
            dropping = _LEVEL[m.group(1)] < min_level
        elif dropping and _CONTINUATION.match(line):
            continue  # the rest of a multi-line record being dropped
        else:
            dropping = False
        if not dropping:
            out.append(line)
    return "".join(out)


def _min_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


class _FilteredStderr:
    """Redirect fd 2 into a temporary file; on exit restore it and write back the filtered text."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._tmp = tempfile.TemporaryFile()
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc):
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()
        kept = filter_lines(text, _min_level())
        if kept:
            os.write(2, kept.encode())
        return False


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        try:
            with _FilteredStderr():
                self._loader.exec_module(module)
        finally:  # the module keeps its real loader (resources, reloads)
            module.__loader__ = self._loader
            if getattr(module, "__spec__", None) is not None:
                module.__spec__.loader = self._loader


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    if os.environ.get("KAGGLEPIPE_TF_IMPORT_LOGS") == "1" or "tensorflow" in sys.modules:
        return
    if _min_level() < 1 or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())
