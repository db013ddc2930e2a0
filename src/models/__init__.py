"""Keras 3 networks, each registered with the keys it takes: a model is one YAML in conf/model/ plus one
registered builder here. Backend-neutral (keras.layers and keras.ops only).

    @register("seed_cnn", SeedCNN)          # arch name, and the pydantic class of its config keys
    def seed_cnn(input_shape, num_classes, p: SeedCNN, aug, seed) -> keras.Model: ...

conf/model/<name>.yaml names the builder (`arch: seed_cnn`) and gives the values. Every model takes uint8 (or
0..255 float) images, augments them in training (src/models/layers.py), and ends in a float32 head whatever the
precision policy: a sigmoid unit giving P(class 1) for two classes, a softmax over the classes otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from omegaconf import DictConfig, OmegaConf

from ..config import Fraction, Name, Section, validate
from ..errors import UserError
from .weights import check_input_size, local_file, probe


class ModelParams(Section):
    """The keys every model has."""
    name: Name                 # the model's name (and the default run name)
    arch: Name                 # the registered builder
    dropout: Fraction
    weights: Optional[Name]    # null (fresh weights), or a weights file of this network (backbones: also imagenet)
    builder_loads_weights: ClassVar[bool] = False  # True: the builder reads `weights` itself (backbones)

    def networks(self) -> list[str]:
        """The keras.applications networks whose weights `weights` names (src/models/weights.py)."""
        return []


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., Any]
    params: type[ModelParams]


_REGISTRY: dict[str, _Entry] = {}


def register(arch: str, params: type[ModelParams]):
    """Register a builder `fn(input_shape, num_classes, p, aug, seed) -> keras.Model` under `arch`."""
    def decorate(fn):
        _REGISTRY[arch] = _Entry(fn, params)
        return fn
    return decorate


def model_params(model_cfg: DictConfig | dict) -> ModelParams:
    """The model's keys, checked against its builder's declaration (a one-line UserError if they do not fit)."""
    data = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    entry = _REGISTRY.get(str(data.get("arch")))
    if entry is None:
        raise UserError(f"config error: model.arch={data.get('arch')!r} is not allowed; expected one of "
                        f"{', '.join(sorted(_REGISTRY))} (each conf/model/*.yaml names its builder)")
    return validate(entry.params, data, prefix="model")


def build_model(model_cfg: DictConfig | dict, input_shape, num_classes: int, aug: Any = None, seed: int = 0):
    """Build the configured network. Set the dtype policy (src/runtime.py) before calling."""
    p = model_params(model_cfg)
    model = _REGISTRY[p.arch].build(tuple(input_shape), int(num_classes), p, aug, int(seed))
    if p.weights and not p.builder_loads_weights:
        model.load_weights(local_file(p.weights))  # a from-scratch network's own earlier weights
    return model


def check_model(model_cfg: DictConfig | dict, image_size: int) -> ModelParams:
    """Before any work: the model's keys, its networks' smallest input size, and that their weights can be had
    (offline ImageNet weights, a file for another network: one line each)."""
    p = model_params(model_cfg)
    for name in p.networks():
        check_input_size(name, image_size)
        probe(name, p.weights)
    if p.weights and not p.builder_loads_weights:
        local_file(p.weights)
    return p


def architectures() -> list[str]:
    return sorted(_REGISTRY)


from . import backbones, features, rates, scratch  # noqa: E402,F401  (registers the builders and optimizers)
from .layers import data_fitted_layers  # noqa: E402,F401
