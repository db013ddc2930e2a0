"""Where a keras.applications network's weights come from (model.weights), and what goes wrong with them.

    null             random weights (seeded by `seed`)
    imagenet         Keras' own download and cache: $KERAS_HOME/models/ (default ~/.keras/models/); a file already
                     there is used without any network
    /path/file.h5    a local no-top weights file of this network (e.g. Keras' *_notop.h5, or model.save_weights of
                     the network built with include_top=False)

Offline, `imagenet` fails inside Keras' download; that becomes one line naming the file Keras wants (the last part
of its URL) and the folder to put it in. A local file for another network or shape is one line too. probe() makes
both checks before any work (src/config.py calls it for the train stage) by building the network once, at its
smallest input size (no-top convolutional weights do not depend on the input size).
"""
from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..paths import project_path


@dataclass(frozen=True)
class Network:
    """A keras.applications network: the input preprocessing its ImageNet weights expect (ImageNetPreprocess
    modes, from each module's preprocess_input in Keras 3.15) and its smallest input size (obtain_input_shape's
    min_size)."""
    preprocessing: str
    min_size: int


NETWORKS = {
    # rescaling/normalisation are layers inside these networks (their preprocess_input is a pass-through)
    "EfficientNetB0": Network("none", 32),
    "EfficientNetV2B0": Network("none", 32),   # include_preprocessing=True: Rescaling + Normalization
    "EfficientNetV2S": Network("none", 32),    # include_preprocessing=True: Rescaling(1/127.5, offset -1)
    "ConvNeXtTiny": Network("none", 32),       # include_preprocessing=True: PreStem (ImageNet mean/std)
    "ResNet50": Network("caffe", 32),          # BGR, ImageNet mean subtracted
    "ResNet50V2": Network("tf", 32),           # -1..1
    "Xception": Network("tf", 71),
    "InceptionV3": Network("tf", 75),
    "MobileNet": Network("tf", 32),            # the smallest graph: quick CPU runs (and the tests)
}


def local_file(weights: str) -> str:
    """A local weights file named by model.weights (relative to the project root)."""
    path = project_path(str(weights))
    if not path.is_file():
        raise UserError(f"model.weights={weights}: no such weights file ({path}); give null, imagenet (backbones) "
                        "or an existing file")
    return str(path)


def check_input_size(name: str, size: int) -> None:
    need = NETWORKS[name].min_size
    if size < need:
        raise UserError(f"{name} needs images of at least {need}x{need} (dataset.image_size={size}); use a larger "
                        "dataset.image_size or another backbone")


def network(name: str, input_shape, weights: str | None):
    """keras.applications.<name> without its top, global-average pooled, with the weights model.weights names."""
    import keras

    check_input_size(name, int(input_shape[0]))
    build = functools.partial(getattr(keras.applications, name), include_top=False, input_shape=tuple(input_shape),
                              pooling="avg")
    if weights is None:
        return build(weights=None)
    if weights == "imagenet":
        return _imagenet(name, build)
    path = local_file(weights)
    problem = None
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            model = build(weights=path)
        except Exception as e:  # Keras says it in several ways: layer count, shape or format mismatch
            problem = _first_line(e)
    # a file that leaves some layers out loads with a warning, those layers keeping their random weights
    partial = [str(w.message) for w in said if "freshly-initialized" in str(w.message) or "Skipping" in str(w.message)]
    if problem or partial:
        raise UserError(f"model.weights={weights}: not a no-top weights file of {name} at this project's input shape "
                        f"({problem or _first_line(Exception(partial[0]))}); give the file saved from "
                        f"keras.applications.{name}(include_top=False), or imagenet")
    return model


def _imagenet(name: str, build):
    """Keras' download (or its cached file). Its progress lines are shown only when it worked."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), warnings.catch_warnings():
            # MobileNet warns that sizes other than 128-224 load the 224 file: the same no-top weights
            warnings.simplefilter("ignore")
            model = build(weights="imagenet")
    except Exception as e:
        url = re.search(r"URL fetch failure on (\S+?):? ", str(e) + " ")
        if url is None:
            raise UserError(f"model.weights=imagenet: Keras could not load the ImageNet weights of {name} "
                            f"({_first_line(e)})") from None
        file = url.group(1).rsplit("/", 1)[-1]
        reason = str(e).split(" -- ", 1)[-1].splitlines()[0][:120]
        raise UserError(f"model.weights=imagenet: Keras could not download {file} for {name} ({reason}); download it "
                        f"where there is a network ({url.group(1)}) and put it in {keras_cache()}/ (Keras' cache: "
                        f"$KERAS_HOME/models, default ~/.keras/models), or give model.weights=/path/to/{file}") from None
    print(said.getvalue(), end="")
    return model


def keras_cache() -> Path:
    """The folder Keras' get_file keeps downloaded weights in (keras/src/utils/file_utils.py: $KERAS_HOME or
    ~/.keras, or /tmp/.keras when that is not writable; then models/)."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(home) / "models"


@functools.lru_cache(maxsize=None)
def _probed(name: str, weights: str, stamp: tuple) -> None:
    network(name, (NETWORKS[name].min_size, NETWORKS[name].min_size, 3), weights)


def probe(name: str, weights: str | None) -> None:
    """Fail now, with one line, if the network cannot get these weights (once per process and file version)."""
    if weights is None:
        return
    stamp: tuple = ()
    if weights != "imagenet":
        st = Path(local_file(weights)).stat()
        stamp = (st.st_size, st.st_mtime_ns)
    _probed(name, weights, stamp)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
