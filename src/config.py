"""The configuration's schema and its checks, all made before any work starts.

The defaults live in conf/ (Hydra groups); their types, ranges and allowed values are declared here, once,
as pydantic models. pydantic rather than Hydra's structured configs: those check types only, while these
also hold ranges, enumerations, "auto or a number" unions and the checks that span keys, and a failure
becomes one line that names the key, the value and what is allowed (config error: train.lr=-1 is not
allowed; expected a number > 0 ...). Each model's own keys are declared beside its builder (src/models/).
"""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

from omegaconf import DictConfig, OmegaConf, open_dict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import UserError

# ------------------------------------------------------------------ field types
PositiveInt = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]          # [0, 1)
OpenFraction = Annotated[float, Field(gt=0, lt=1)]      # (0, 1)
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Name = Annotated[str, Field(min_length=1)]


class Section(BaseModel):
    """Strict types (2.5 is no integer, "yes" no boolean) and no unknown keys."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ------------------------------------------------------------------ the groups
class Paths(Section):
    raw: str
    processed: str
    models: str
    metrics: str
    plots: str
    predictions: str
    submissions: str
    features: str


class Prepare(Section):
    workers: Annotated[Count, Field(description="0 = every core")]
    write_images: bool
    preview: bool


class KaggleSource(Section):
    competition: Optional[Name]
    archives: list[Name]


class Demo(Section):
    seed: int
    n_train_per_class: PositiveInt
    n_test: PositiveInt


class Dataset(Section):
    name: Name
    raw_dir: Name
    layout: Literal["filename", "labels_csv"]
    labels_csv: Optional[Name]
    image_ext: Annotated[list[Name], Field(min_length=1)]
    classes: Annotated[list[Name], Field(min_length=2)]
    image_size: Annotated[int, Field(ge=8, le=1024)]
    resize: Literal["stretch", "pad", "crop"]
    val_fraction: OpenFraction
    split_seed: int
    sample_submission: Name
    metric: Literal["log_loss", "accuracy"]
    submission: Literal["probability", "class_name"]
    kaggle: KaggleSource
    generate: Optional[Literal["demo"]]
    demo: Optional[Demo] = None

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.classes)) != len(self.classes):
            raise _Invalid("classes", self.classes, "a list of at least two distinct class names")
        if self.layout == "labels_csv" and not self.labels_csv:
            raise _Invalid("labels_csv", self.labels_csv, "the labels CSV's file name when dataset.layout=labels_csv")
        return self


Schedule = Literal["constant", "cosine", "onecycle"]


class Finetune(Section):
    """Two-phase fine-tuning of a backbone (src/finetune.py): phase 1 trains the head for head_epochs, phase 2 the
    unfrozen backbone (at backbone_lr_multiplier x train.lr) and the head (at train.lr) until train.epochs."""
    head_epochs: Annotated[Count, Field(description="0 = one phase, no fine-tuning")]
    head_lr: Positive
    head_schedule: Schedule
    unfreeze: Annotated[Union[Literal["all"], PositiveInt, Name], Field(
        description="all, the top N layers with weights, or the layers from the first one whose name starts so")]
    backbone_lr_multiplier: Annotated[float, Field(gt=0, le=1)]


class Train(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"]
    lr: Positive
    weight_decay: NonNegative
    momentum: Fraction
    nesterov: bool
    schedule: Schedule
    warmup_epochs: NonNegative
    label_smoothing: Fraction
    ema_momentum: Optional[OpenFraction]
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]
    early_stopping_patience: Annotated[Count, Field(description="0 = never")]
    resume: bool
    checkpoint_every: Annotated[Count, Field(description="0 = no resumable checkpoints")]
    validation_freq: PositiveInt
    steps_per_execution: PositiveInt
    jit_compile: Union[Literal["auto"], bool, None]
    distribute: Literal["none", "data_parallel"]
    peer_timeout: Annotated[int, Field(ge=5, description="seconds; several processes only")]
    tta: bool
    subset: Annotated[Count, Field(description="0 = all")]
    fit_on_all: bool
    finetune: Finetune


class Augment(Section):
    flip: bool
    rotation: Annotated[float, Field(ge=0, le=0.5)]
    zoom: Fraction
    translate: Fraction
    contrast: Fraction
    fill_mode: Literal["reflect", "nearest", "constant", "wrap"]
    mixup: Annotated[NonNegative, Field(description="0 = off")]
    cutmix: Annotated[NonNegative, Field(description="0 = off")]


Clip = Annotated[float, Field(gt=0, lt=0.5)]


class Evaluate(Section):
    temperature: Union[Literal["auto"], Annotated[float, Field(ge=0.01, le=100)]]
    clip: Union[Literal["auto"], Clip]
    clip_candidates: Annotated[list[Clip], Field(min_length=1)]
    error_grid: PositiveInt       # most_wrong.png: the wrong validation images drawn, most confident first
    confused_pairs: PositiveInt   # confused_pairs.png: the (true, predicted) class pairs drawn, most errors first


class Tracking(Section):
    enabled: bool
    uri: Optional[Name]
    experiment: Name
    log_model: bool
    register_model: bool = Field(alias="register")  # `register` itself would shadow BaseModel.register
    registered_model: Name


class Kaggle(Section):
    retries: Count
    force: bool
    status_limit: PositiveInt


class Submit(Section):
    file: Optional[Name]
    message: Optional[str]
    dry_run: bool


class CrossValidation(Section):
    folds: Optional[Annotated[int, Field(ge=2)]]
    fold: Optional[Count]
    average: Literal["probability", "logit"]

    @model_validator(mode="after")
    def _fold_in_range(self):
        if self.fold is not None and (self.folds is None or self.fold >= self.folds):
            raise _Invalid("fold", self.fold, f"a fold from 0 to cv.folds - 1 (cv.folds={_show(self.folds)}), or null")
        return self


class Blend(Section):
    name: Name
    members: list[Name]
    weights: Literal["fit", "mean"]


class SearchParam(Section):
    """One key of a search space (search.space): a float or int range, or a list of choices."""
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[Positive] = None
    choices: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _consistent(self):
        return self._choices_only() if self.type == "categorical" else self._range_only()

    def _choices_only(self):
        if not self.choices:
            raise _Invalid("choices", self.choices, "a non-empty list of config values")
        for k in ("low", "high", "step"):
            if getattr(self, k) is not None:
                raise _Invalid(k, getattr(self, k), "nothing: a categorical key takes choices only")
        if self.log:
            raise _Invalid("log", True, "false: a categorical key takes choices only")
        return self

    def _range_only(self):
        for k in ("low", "high"):
            if getattr(self, k) is None:
                raise _Invalid(k, None, f"a number: a {self.type} key takes low and high (or use type: categorical)")
        if self.choices is not None:
            raise _Invalid("choices", self.choices, f"nothing: a {self.type} key takes low and high")
        if not self.low < self.high:
            raise _Invalid("high", self.high, f"a number above low={self.low:g} (the range is empty)")
        if self.log and self.low <= 0:
            raise _Invalid("low", self.low, "a number > 0 with log: true (a log scale starts above 0)")
        if self.log and self.step is not None:
            raise _Invalid("step", self.step, "null with log: true (Optuna samples a log scale without steps)")
        for k in ("low", "high", "step") if self.type == "int" else ():
            if getattr(self, k) is not None and not float(getattr(self, k)).is_integer():
                raise _Invalid(k, getattr(self, k), "a whole number for an int key")
        return self


class Pruner(Section):
    kind: Literal["median", "halving", "threshold", "none"]
    warmup_epochs: Count
    startup_trials: Count
    threshold: Optional[float]

    @model_validator(mode="after")
    def _threshold_given(self):
        if self.kind == "threshold" and self.threshold is None:
            raise _Invalid("threshold", None, "a val_log_loss above which a trial is pruned (pruner.kind=threshold)")
        return self


class Search(Section):
    study: Name
    trials: PositiveInt
    timeout: Optional[Positive]
    storage: Optional[Name]
    seed: int
    start_from_config: bool
    pruner: Pruner
    space: dict[str, Any]  # config keys -> SearchParam, nested as in the config; checked by src/search_space.py


class Config(Section):
    name: Name
    seed: int
    paths: Paths
    prepare: Prepare
    dataset: Dataset
    model: dict[str, Any]  # each model's keys: src/models/, checked by the stages that build a model
    train: Train
    augment: Augment
    evaluate: Evaluate
    tracking: Tracking
    kaggle: Kaggle
    submit: Submit
    cv: CrossValidation
    member: Optional[Name]
    members: dict[str, dict[str, Any]]
    blend: Blend
    search: Search

    @model_validator(mode="after")
    def _consistent(self):
        if self.train.epochs % self.train.validation_freq:
            raise _Invalid("train.validation_freq", self.train.validation_freq, f"a divisor of train.epochs "
                           f"({self.train.epochs}), so that the last epoch is validated")
        if self.cv.folds and self.train.fit_on_all:
            raise _Invalid("train.fit_on_all", True, "false when cv.folds is set (in cross-validation every image "
                           "is some fold's validation image)")
        head_epochs = self.train.finetune.head_epochs
        if head_epochs and self.model.get("arch") != "backbone":
            raise _Invalid("train.finetune.head_epochs", head_epochs, "0 unless the model is a keras.applications "
                           f"backbone (model.arch=backbone, e.g. model=efficientnet_b0; now {self.model.get('arch')})")
        if head_epochs and head_epochs >= self.train.epochs:
            raise _Invalid("train.finetune.head_epochs", head_epochs, f"fewer than train.epochs={self.train.epochs} "
                           "(phase 2 fine-tunes for the epochs after the head's)")
        return self


# ------------------------------------------------------------------ checking
class _Invalid(ValueError):
    """A check that spans keys failed: names the key (within its section), the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(allowed)
        self.key, self.value, self.allowed = key, value, allowed


def check(cfg: DictConfig, stage: str | None = None) -> None:
    """Check the whole config (and, for the stages that build a model, the model's own keys and the batch size
    against the devices) before any work; a mistake raises a one-line UserError."""
    container = _resolved(cfg)
    container.pop("hydra", None)
    validate(Config, container)
    if stage in ("train",):
        from .models import check_model
        from .runtime import check_batch_fits_devices

        check_model(cfg.model, int(cfg.dataset.image_size))
        check_batch_fits_devices(cfg)


def validate(schema: type[BaseModel], data: Any, prefix: str = "") -> Any:
    """schema.model_validate(data), or a one-line UserError for its first problem."""
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        raise UserError(_first_problem(schema, data, e, prefix)) from None


def _resolved(cfg: DictConfig) -> dict:
    try:  # a broken interpolation anywhere (e.g. dataset.raw_dir=${nope}) fails here, not halfway through a stage
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        key = getattr(e, "full_key", None) or "?"
        raise UserError(f"config error: {key}: {str(e).splitlines()[0]}; fix it in conf/ or override it") from None


def _first_problem(schema: type[BaseModel], data: Any, e: ValidationError, prefix: str) -> str:
    err = e.errors()[0]
    keys = _field_path(err["loc"])
    if isinstance(err.get("ctx", {}).get("error"), _Invalid):
        inv = err["ctx"]["error"]
        keys, value, allowed = [*keys, inv.key], inv.value, inv.allowed
    elif err["type"] == "extra_forbidden":
        key = ".".join([prefix, *keys] if prefix else keys)
        return f"config error: {key} is not a known key; remove it, or check its spelling against conf/"
    else:
        value, allowed = _lookup(data, keys), describe_field(schema, keys)
    key = ".".join([prefix, *keys] if prefix else keys)
    if err["type"] == "missing":
        return f"config error: {key} is missing; expected {allowed} (add it in conf/ or with +{key}=...)"
    return (f"config error: {key}={_show(value)} is not allowed; expected {allowed} "
            f"(fix it in conf/ or override it, e.g. {key}=...)")


def _field_path(loc: tuple) -> list[str]:
    """The field names in a pydantic error location (union-member tags and list indices dropped)."""
    out = []
    for part in loc:
        if not (isinstance(part, str) and part.isidentifier()):
            break
        out.append(part)
    return out


def _lookup(data: Any, keys: list[str]) -> Any:
    for k in keys:
        data = data.get(k) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else repr(value)


# ------------------------------------------------------------------ "what is allowed", in words
def describe_field(schema: type[BaseModel], keys: list[str]) -> str:
    annotation, metadata, note = schema, [], None
    for k in keys:
        fields = annotation.model_fields  # a key is a field's name, or its alias (Tracking.register)
        field = fields[k] if k in fields else next(f for f in fields.values() if f.alias == k)
        annotation, metadata, note = field.annotation, list(field.metadata), field.description
    text = describe(annotation, metadata)
    return f"{text} ({note})" if note else text


def describe(annotation: Any, metadata: list | None = None) -> str:
    """An annotation in words: 'an integer >= 1', 'auto or a number in (0, 0.5)', 'one of adam, sgd'."""
    metadata = list(metadata or [])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return describe(args[0], [*metadata, *args[1:]])
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args)) if len(args) > 1 else str(args[0])
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if origin is list:
        bounds, items = _bounds(metadata), _plural(describe(args[0]))
        lo, hi = bounds.get("min_length"), bounds.get("max_length")
        if lo is not None and lo == hi:
            return f"a list of exactly {lo} {items}"
        if lo is not None and lo > 1:
            return f"a list of at least {lo} {items}"
        return f"{'a non-empty list' if lo == 1 else 'a list'} of {items}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    if annotation is str:
        return "a non-empty text" if _bounds(metadata).get("min_length") else "a text"
    word = {int: "an integer", float: "a number"}.get(annotation, getattr(annotation, "__name__", "?"))
    return word + _range(_bounds(metadata), annotation is int)


def _bounds(metadata: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(m, attr, None) is not None:
                out[attr] = getattr(m, attr)
        for inner in getattr(m, "metadata", []):  # a FieldInfo nested in Annotated
            out.update(_bounds([inner]))
    return out


def _range(b: dict[str, Any], integer: bool) -> str:
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = ("]", b["le"]) if "le" in b else (")", b["lt"]) if "lt" in b else None
    if lo and hi:
        if integer and lo[0] == "[" and hi[0] == "]":
            return f" from {lo[1]} to {hi[1]}"
        return f" in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f" {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return ""


def _plural(text: str) -> str:
    for a, b in (("an integer", "integers"), ("a number", "numbers"), ("a non-empty text", "non-empty texts"),
                 ("a text", "texts")):
        if text.startswith(a):
            return b + text[len(a):]
    return text


# ------------------------------------------------------------------ members: named variants of the config
def resolve_member(cfg: DictConfig) -> DictConfig:
    """member=<name>: the config with members.<name> applied (its model in place of `model`, its other keys
    merged over the config) and `name` set to the member's name; the config itself when member is null."""
    member = cfg.get("member")
    if not member:
        return cfg
    members = cfg.get("members") or {}
    if member not in members:
        raise UserError(f"config error: member={member!r} is not one of members ({', '.join(members) or 'none'}); "
                        "name one of them, or define it under members: in the config")
    delta = OmegaConf.to_container(members[member], resolve=True)
    out = cfg.copy()
    with open_dict(out):
        if "model" in delta:
            out.model = delta.pop("model")
        out.merge_with(delta)
        out.name = member
    return out


# ------------------------------------------------------------------ composing without a command line
def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The project config composed as the command line would compose it (tests, notebooks, benchmarks)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return resolve_member(hydra_compose(config_name=config_name, overrides=list(overrides or [])))
