"""kagglepipe: Kaggle image competitions from raw download to a scored submission CSV."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the logs

from ._quiet_import import install as _install_quiet_import  # noqa: E402

_install_quiet_import()
