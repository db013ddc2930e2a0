"""TensorFlow's pre-initialisation C++ log lines obey TF_CPP_MIN_LOG_LEVEL (src/_quiet_import.py)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT
from src._quiet_import import filter_lines

NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
INFO = "I0000 00:00:1795462815.818463    3120 port.cc:153] oneDNN custom operations are on.\n"
INFO2 = ("I0000 00:00:1795462859.268326    3259 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
         "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.\n")
ERR = "E0000 00:00:1795462815.818463    3120 cuda_dnn.cc:8] Unable to register cuDNN factory\n"
PYWARN = "/x/site-packages/foo.py:12: UserWarning: something\n"


def test_filter_drops_records_below_the_level_and_keeps_the_rest():
    text = NOTICE + INFO + INFO2 + PYWARN + ERR + "plain output\n"
    assert filter_lines(text, 2) == PYWARN + ERR + "plain output\n"
    assert filter_lines(text, 3) == PYWARN + "plain output\n"
    assert filter_lines(text, 0) == INFO + INFO2 + PYWARN + ERR + "plain output\n"
    assert filter_lines(INFO2 + PYWARN, 1) == PYWARN  # a record's continuation goes with it, nothing after it


def test_importing_tensorflow_through_the_package_prints_nothing():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("KAGGLEPIPE_TF_IMPORT_LOGS", None)
    code = "import src, tensorflow, keras; import sys; print(tensorflow.__spec__.loader.__class__.__name__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.strip() == "SourceFileLoader"  # the real loader is restored on the module
