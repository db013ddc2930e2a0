"""A search's space (search.space, conf/search/): its keys parsed and checked against the config schema before any
trial runs, sampled by an Optuna trial, and turned into a config or into command-line overrides.

    space:
      train:
        lr: {type: float, low: 3.0e-4, high: 1.0e-2, log: true}     # float / int: low, high (log, step)
        batch_size: {type: categorical, choices: [16, 32, 64]}       # any config values, lists included

Every end of every range and every choice is put into the config and checked as `python -m src.train` would check
it (src/config.py, the model's own keys included), so a value the schema refuses is one line before the first
trial, not a failed trial later.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import SearchParam, check, validate
from .errors import UserError

SECTIONS = ("train", "augment", "model")  # what a trial may change (and the top-level seed)
FIXED = {"model.name": "it names the run's outputs", "model.arch": "it swaps the network; search one model at a time",
         "train.fit_on_all": "a trial is scored on the validation images it would then train on",
         "train.resume": "it is how a killed trial resumes"}
_ABSENT = object()


@dataclass(frozen=True)
class Dimension:
    """One searched key: its config key (the Optuna parameter's name too) and its distribution."""
    key: str
    p: SearchParam

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this key, as a config value."""
        p = self.p
        if p.type == "float":
            return trial.suggest_float(self.key, p.low, p.high, log=p.log, step=p.step)
        if p.type == "int":
            return trial.suggest_int(self.key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        return self.decode(trial.suggest_categorical(self.key, [self.encode(c) for c in p.choices]))

    def encode(self, value: Any) -> Any:
        """Optuna's choices are scalars: a list or mapping choice (e.g. model.widths) is stored as its JSON text."""
        return json.dumps(value) if isinstance(value, (list, dict)) else value

    def decode(self, value: Any) -> Any:
        if self.p.type != "categorical":
            return value
        texts = {json.dumps(c): c for c in self.p.choices if isinstance(c, (list, dict))}
        return texts.get(value, value) if isinstance(value, str) else value

    def ends(self) -> list[Any]:
        """The values that bound what this key can take: both ends of a range, or every choice."""
        if self.p.type == "categorical":
            return list(self.p.choices)
        cast = int if self.p.type == "int" else float
        return [cast(self.p.low), cast(self.p.high)]

    def contains(self, value: Any) -> bool:
        if self.p.type == "categorical":
            return value in self.p.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.p.low <= value <= self.p.high


def parse(cfg: DictConfig) -> list[Dimension]:
    """search.space as dimensions; a malformed entry, an unknown or unsearchable key is one line (UserError)."""
    space = OmegaConf.to_container(cfg.search.space, resolve=True)
    dims = [Dimension(key, validate(SearchParam, spec, prefix=f"search.space.{key}"))
            for key, spec in _leaves(space)]
    if not dims:
        raise UserError("search.space is empty; give at least one key to search, e.g. "
                        "search.space.train.lr={type: float, low: 1e-4, high: 1e-2, log: true} (see conf/search/)")
    for d in dims:
        _searchable(cfg, d.key)
    return dims


def _leaves(space: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(config key, spec) for each entry: a mapping with a `type` is a spec, any other mapping a config section."""
    if isinstance(space, dict) and "type" in space and prefix:
        return [(prefix, space)]
    if not isinstance(space, dict):
        raise UserError(f"search.space.{prefix}={space!r} is not a search dimension; give a mapping such as "
                        "{type: float, low: 0.0, high: 0.5} or {type: categorical, choices: [...]}")
    return [leaf for k, v in space.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]


def _searchable(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if value is _ABSENT:
        raise UserError(f"search.space.{key}: {key} is not a config key; search keys of {', '.join(SECTIONS)} "
                        "(or seed) that the composed config has (see conf/), e.g. train.lr")
    if OmegaConf.is_dict(value):
        raise UserError(f"search.space.{key}: {key} is a section of the config, not a key; name its keys")
    if key != "seed" and key.split(".")[0] not in SECTIONS:
        raise UserError(f"search.space.{key}: only keys of {', '.join(SECTIONS)} (or seed) can be searched; "
                        f"{key} would change the data or the outputs every trial shares")
    if key in FIXED:
        raise UserError(f"search.space.{key}: {key} cannot be searched ({FIXED[key]})")


def check_values(cfg: DictConfig, dims: list[Dimension]) -> None:
    """Every end and choice, each put into the config on its own, passes the config's checks (one line if not)."""
    for d in dims:
        for value in d.ends():
            try:
                check(apply(cfg, {d.key: value}), "train")
            except UserError as e:
                raise UserError(f"search.space.{d.key}: the value {value!r} would fail: {e}") from None


def baseline(cfg: DictConfig, dims: list[Dimension]) -> dict[str, Any]:
    """The config's own value of each key (search.start_from_config's first trial): each must lie in its space."""
    values = {d.key: _value(cfg, d.key) for d in dims}
    for d in dims:
        if not d.contains(values[d.key]):
            raise UserError(f"search.start_from_config: {d.key}={values[d.key]!r} (the config's value) lies outside "
                            f"search.space.{d.key}; widen the space to include it, or set "
                            "search.start_from_config=false")
    return values


def _value(cfg: DictConfig, key: str) -> Any:
    v = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def sample(trial: Any, dims: list[Dimension]) -> dict[str, Any]:
    return {d.key: d.suggest(trial) for d in dims}


def params_to_values(params: dict[str, Any], dims: list[Dimension]) -> dict[str, Any]:
    """A trial's Optuna parameters as config values."""
    return {d.key: d.decode(params[d.key]) for d in dims if d.key in params}


def apply(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of the config with these keys set, as the same overrides on the command line would set them."""
    out = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def overrides(values: dict[str, Any]) -> list[str]:
    """Command-line overrides that set these values (`train.lr=0.0012 model.widths=[16,32,64]`)."""
    return [f"{key}={_override_value(v)}" for key, v in values.items()]


def shown(values: dict[str, Any]) -> str:
    """The values for a log line: floats to 4 significant digits (the overrides keep every digit)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={_override_value(v)}" for k, v in values.items())


def _override_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":")).replace('"', "")
    return str(v)
