"""kagglepipe: Kaggle image competitions from raw download to a scored submission CSV."""
import importlib.abc
import importlib.util
import os
import sys
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ INFO and WARNING lines stay out of the logs
# conf/hydra/launcher/<plugin's name>.yaml set the launcher plugins' defaults in their place, every key given, which
# Hydra 1.3 merges over the plugin's schema with a deprecation notice in every job's process: a notice, not a fault.
warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/\w+' is validated against ConfigStore schema")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """TensorFlow 2.21 writes a few C++ log lines to fd 2 while it is imported, before it has read
    TF_CPP_MIN_LOG_LEVEL (Abseil's pre-initialisation notice, "oneDNN custom operations are on" on AVX-512 CPUs):
    they would stand above every one-line error. Hold fd 2 in a file during that import; show it if the import
    fails. KAGGLEPIPE_TF_IMPORT_LOGS=1 leaves the import alone."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            real = spec.loader.exec_module
            spec.loader.exec_module = lambda module: _holding_fd2(real, module)
        return spec


def _holding_fd2(exec_module, module) -> None:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            exec_module(module)
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


if os.environ.get("KAGGLEPIPE_TF_IMPORT_LOGS") != "1" and "tensorflow" not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
