"""TensorFlow's start-up lines (src/__init__.py's import hook): while `tensorflow` is imported, fd 2 is held in a file,
so the C++ log lines it writes before reading TF_CPP_MIN_LOG_LEVEL never stand above a one-line error; they are
shown if the import fails. KAGGLEPIPE_TF_IMPORT_LOGS=1 leaves the import alone. The real TensorFlow once; a stand-in
`tensorflow` package (found first on PYTHONPATH) for the rest.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def _python(code: str, env: dict | None = None, fake: Path | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if not (env and "KAGGLEPIPE_TF_IMPORT_LOGS" in env):
        e.pop("KAGGLEPIPE_TF_IMPORT_LOGS", None)
    if fake is not None:
        e["PYTHONPATH"] = os.pathsep.join([str(fake), str(ROOT)])
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=e, timeout=300)


def test_importing_tensorflow_through_the_package_prints_nothing():
    r = _python("import src, tensorflow, keras; import sys; print(tensorflow.__spec__.loader.__class__.__name__)")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.strip() == "SourceFileLoader"  # the real loader, only its exec_module wrapped


def _fake_tensorflow(tmp_path: Path, body: str) -> Path:
    pkg = tmp_path / "fake" / "tensorflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nos.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\n')\n"
                                     + body)
    return tmp_path / "fake"


def test_the_lines_tensorflow_writes_while_it_imports_are_held(tmp_path: Path):
    fake = _fake_tensorflow(tmp_path, "VERSION = 'fake'\n")
    r = _python("import src, tensorflow, sys; print(tensorflow.VERSION); sys.stderr.write('after\\n')", fake=fake)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "fake\n" and r.stderr == "after\n"  # held during the import only: later output shows
    shown = _python("import src, tensorflow", env={"KAGGLEPIPE_TF_IMPORT_LOGS": "1"}, fake=fake)
    assert "oneDNN custom operations are on" in shown.stderr  # left alone on request
    plain = _python("import tensorflow", fake=fake)
    assert "oneDNN custom operations are on" in plain.stderr  # without src nothing is held


def test_a_failing_tensorflow_import_still_shows_its_output(tmp_path: Path):
    fake = _fake_tensorflow(tmp_path, "raise ImportError('libtensorflow_framework.so.2: cannot open shared object')\n")
    r = _python("import src\nimport tensorflow", fake=fake)
    assert r.returncode == 1
    err = r.stderr
    assert "oneDNN custom operations are on" in err, err                       # what it wrote is replayed ...
    assert "ImportError: libtensorflow_framework.so.2: cannot open shared object" in err, err  # ... with the error
    assert err.index("oneDNN") < err.index("Traceback"), err
    r = _python("import src\ntry:\n    import tensorflow\nexcept ImportError:\n    pass\nimport sys\n"
                "sys.stderr.write('still writing\\n')", fake=fake)
    assert r.returncode == 0 and r.stderr.endswith("still writing\n"), r.stderr  # fd 2 is back after a failure


@pytest.mark.parametrize("module", ["numpy", "json"])
def test_other_imports_are_left_alone(module: str):
    r = _python(f"import src, {module}, sys; sys.stderr.write('x\\n')")
    assert r.returncode == 0 and r.stderr == "x\n"
