"""Validated, frozen settings of one pretraining trial.

A trial receives its configuration from Ray Tune as a plain nested dict; it is
turned into these frozen dataclasses once, at the boundary
(:func:`PretrainTrial.from_mapping`), and everything below takes explicit
arguments. The driver validates every trial variant with the same classes
before any trial starts, so a bad value fails in seconds, not after a trial
has been scheduled.

Unknown keys, wrong types and out-of-range values raise
:class:`~trainables.errors.ConfigError` with one line per problem that names
the key, the value and the valid choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from trainables.errors import ConfigError
from trainables.peak import PeakRule

#: Recipe presets, exactly the paper's two pretraining recipes. Keys a user sets
#: explicitly win over the preset. Shared by both recipes (and so plain defaults
#: of :class:`PretrainSettings`): AdamW lr 4e-3, wd 0.05, betas (0.9, 0.999),
#: label smoothing 0.1, batch 4096, 20 warm-up epochs from 1e-6 x lr, cosine to
#: 1e-6, RandomResizedCrop scale (0.8, 1.0) and horizontal flip.
RECIPES: dict[str, dict[str, Any]] = {
    "simple": {
        "randaugment": None,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "random_erasing": 0.0,
        "drop_path_rate": 0.0,
    },
    "advanced": {
        "randaugment": "rand-m9-n2",  # RandAugment, 2 ops, magnitude 9
        "mixup_alpha": 0.8,
        "cutmix_alpha": 1.0,
        "random_erasing": 0.25,
        "drop_path_rate": 0.1,
    },
}

#: Normalisation presets: ImageNet mean/std, or the paper's "divide by 255 only".
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "scale_only": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


# YAML gives real ints and bools; strings such as "4e-3" (PyYAML reads exponent
# floats without a dot as strings) still parse as floats, but True is no number.
Int = Annotated[int, Strict()]
Float = Annotated[float, BeforeValidator(_no_bool)]
Bool = Annotated[bool, Strict()]

_STRICT = ConfigDict(extra="forbid")
_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
DEMO_SCHEME = "demo://"


def absolute_path(value: str) -> str:
    """Expand ``~`` and make a local path absolute (trials run in another folder).

    URIs (``demo://``, ``s3://`` ...) are left as they are.
    """
    if "://" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


@dataclass(frozen=True, config=_STRICT)
class ClassificationData:
    """A classification set in ImageNet's folder layout: root/train/<class>/*, root/val/<class>/*."""

    root: str
    train_dir: str = "train"
    val_dir: str = "val"
    on_bad_image: Literal["skip", "error"] = "skip"
    num_workers: Int = Field(default=4, ge=0)

    _root = field_validator("root")(absolute_path)


@dataclass(frozen=True, config=_STRICT)
class PretrainSettings:
    """How one encoder is pretrained; recipe keys left out come from ``RECIPES[recipe]``."""

    model: str
    recipe: Literal["simple", "advanced"] = "simple"
    epochs: Int = Field(default=300, ge=1)
    image_size: Int = Field(default=224, ge=16)
    batch_size: Int = Field(default=4096, ge=1)
    micro_batch_size: Int = Field(default=256, ge=1)
    lr: Float = Field(default=4e-3, gt=0)
    weight_decay: Float = Field(default=0.05, ge=0)
    betas: tuple[Float, Float] = (0.9, 0.999)
    warmup_epochs: Int = Field(default=20, ge=0)
    warmup_lr_ratio: Float = Field(default=1e-6, gt=0, le=1)
    min_lr: Float = Field(default=1e-6, ge=0)
    label_smoothing: Float = Field(default=0.1, ge=0, lt=1)
    normalize: Literal["imagenet", "scale_only"] = "imagenet"
    rrc_scale: tuple[Float, Float] = (0.8, 1.0)
    hflip: Float = Field(default=0.5, ge=0, le=1)
    randaugment: str | None = None
    mixup_alpha: Float = Field(default=0.0, ge=0)
    cutmix_alpha: Float = Field(default=0.0, ge=0)
    random_erasing: Float = Field(default=0.0, ge=0, le=1)
    drop_path_rate: Float = Field(default=0.0, ge=0, lt=1)
    seed: Int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off"] = "auto"
    channels_last: Bool = True
    train_batches_per_epoch: Int | None = Field(default=None, ge=1)
    val_batches: Int | None = Field(default=None, ge=1)
    init_checkpoint: str | None = None
    keep_best_accuracy: Bool = False

    @model_validator(mode="before")
    @classmethod
    def _fill_from_recipe(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            preset = RECIPES.get(data.get("recipe", "simple"))
            if preset is not None:  # an unknown recipe is reported by the Literal check
                data = {**preset, **data}
        return data

    @field_validator("init_checkpoint")
    @classmethod
    def _checkpoint_path(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSettings:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}): gradients are accumulated over whole micro-batches"
            )
        if self.uses_mixup and self.micro_batch_size % 2:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must be even with Mixup/CutMix")
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs}): "
                "lower warmup_epochs or raise epochs"
            )
        low, high = self.rrc_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"rrc_scale {self.rrc_scale} must satisfy 0 < low <= high <= 1")
        return self

    @property
    def uses_mixup(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def mean_std(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        return NORMALIZATIONS[self.normalize]


@dataclass(frozen=True, config=_STRICT)
class TargetSet:
    """A target medical segmentation set whose training images the score is computed on."""

    name: str
    root: str
    format: Literal["generic", "acdc", "covid_qu", "idrid"] = "generic"
    slice_axis: Int = Field(default=2, ge=0, le=2)
    primary: Bool = False

    _root = field_validator("root")(absolute_path)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _NAME_PATTERN.match(value):
            raise ValueError(
                f"target name {value!r} must start with a letter and hold only letters, "
                "digits, '_' and '-' (it becomes part of metric names)"
            )
        return value


@dataclass(frozen=True, config=_STRICT)
class ScoreSettings:
    """The robustness score of arXiv 2410.18677 (see :mod:`trainables.transferability`)."""

    targets: tuple[TargetSet, ...]
    n_images: Int = Field(default=256, ge=2)
    image_size: Int = Field(default=224, ge=16)
    level: Int = Field(default=-2, le=-1)
    pooled: Bool = True
    distance: Literal["cosine", "mse", "pearson"] = "cosine"
    margin: Float = Field(default=0.5, ge=0)
    views: Literal["paper", "per_image"] = "paper"
    sample_seed: Int = Field(default=0, ge=0)
    view_seed: Int = Field(default=0, ge=0)
    batch_size: Int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _targets_consistent(self) -> ScoreSettings:
        if not self.targets:
            raise ValueError("at least one target set is needed")
        names = [t.name for t in self.targets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"target names must be unique; repeated: {duplicates}")
        primaries = [t.name for t in self.targets if t.primary]
        if len(primaries) > 1:
            raise ValueError(f"only one target can be primary; got {primaries}")
        return self

    @property
    def primary_target(self) -> TargetSet:
        return next((t for t in self.targets if t.primary), self.targets[0])

    def metric_names(self, target: TargetSet) -> dict[str, str]:
        """Reported metric names of one target: unsuffixed with one target, suffixed with several."""
        suffix = "" if len(self.targets) == 1 else f"_{target.name}"
        return {key: f"{key}{suffix}" for key in ("robustness", "robustness_pos", "robustness_neg")}


@dataclass(frozen=True, config=_STRICT)
class PeakSettings(PeakRule):
    """The peak rule (:mod:`trainables.peak`) applied to ``metric``.

    ``max_epochs`` defaults to the trial's ``pretrain.epochs``.
    """

    metric: str = "robustness"

    def rule(self, max_epochs: int) -> PeakRule:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(PeakRule)}
        return PeakRule(**{**fields, "max_epochs": self.max_epochs or max_epochs})


@dataclass(frozen=True, config=_STRICT)
class PretrainTrial:
    """Everything one pretraining trial needs; built from the trial's config dict."""

    classification: ClassificationData
    pretrain: PretrainSettings
    score: ScoreSettings
    peak: PeakSettings = Field(default_factory=PeakSettings)
    # data-parallel trials (Ray Train workers; see trainables.parallel), set from the tune section
    workers: Int = Field(default=1, ge=1)
    cpus_per_worker: Float = Field(default=1.0, gt=0)
    gpus_per_worker: Float = Field(default=0.0, ge=0)
    custom_resources: dict[str, Float] = Field(default_factory=dict)
    checkpoints_to_keep: Int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _micro_batch_splits_over_workers(self) -> PretrainTrial:
        if self.pretrain.micro_batch_size % self.workers:
            raise ValueError(
                f"pretrain.micro_batch_size {self.pretrain.micro_batch_size} does not split over "
                f"{self.workers} data-parallel workers: every worker takes an equal share of each micro-batch"
            )
        return self

    @model_validator(mode="after")
    def _known_peak_metric(self) -> PretrainTrial:
        reported = self.reported_metrics()
        if self.peak.metric not in reported:
            raise ValueError(
                f"peak.metric {self.peak.metric!r} is not a metric the trial reports; "
                f"choose one of {', '.join(reported)}"
            )
        return self

    def reported_metrics(self) -> list[str]:
        """The per-epoch metrics the rule can watch (timings aside)."""
        names = ["robustness", "robustness_pos", "robustness_neg"]
        if len(self.score.targets) > 1:
            names += [
                name for target in self.score.targets for name in self.score.metric_names(target).values()
            ]
        return names + ["val_top1", "val_top5", "val_loss", "train_loss"]

    @property
    def rule(self) -> PeakRule:
        """The peak rule of this trial, with the trial's epoch budget as ``max_epochs``."""
        return self.peak.rule(self.pretrain.epochs)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "config") -> PretrainTrial:
        return validate(cls, data, source)


UNSET = "<unset: the search space's condition does not hold>"


def drop_unset(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` without the keys a conditional search dimension left :data:`UNSET` (they keep defaults)."""
    return {
        key: drop_unset(value) if isinstance(value, Mapping) else value
        for key, value in data.items()
        if not (isinstance(value, str) and value == UNSET)
    }


def validate(cls: Any, data: Mapping[str, Any], source: str = "config") -> Any:
    """Build ``cls`` from ``data``; on failure raise one ConfigError naming every bad key.

    Keys set to :data:`UNSET` (by a conditional search dimension) are left out.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return cls(**drop_unset(data))
    except ValidationError as exc:
        problems = [_describe(error, cls) for error in exc.errors()]
        raise ConfigError(f"invalid {source}: " + "; ".join(problems)) from None
    except TypeError as exc:  # a required key missing at the top level
        raise ConfigError(f"invalid {source}: {exc}") from None


def _describe(error: Mapping[str, Any], root_cls: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        valid = _valid_keys(root_cls, error["loc"][:-1])
        hint = difflib.get_close_matches(str(error["loc"][-1]), valid, n=1)
        did_you_mean = f"did you mean {hint[0]!r}? " if hint else ""
        return f"unknown key {key!r} ({did_you_mean}valid keys here: {', '.join(valid)})"
    if kind in ("missing", "missing_argument"):
        return f"missing required key {key!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if isinstance(error.get("input"), Mapping):  # a rule across several keys of a section
        return f"{key}: {message}"
    return f"{key}={error.get('input')!r}: {message}"


def _valid_keys(cls: Any, path: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) dataclass at ``path``, for 'unknown key' messages."""
    for part in path:
        if isinstance(part, int):
            continue  # an item of a tuple field: ``cls`` already is the item type
        cls = _dataclass_in(typing.get_type_hints(cls).get(part))
    return sorted(getattr(cls, "__dataclass_fields__", {}))


def _dataclass_in(annotation: Any) -> Any:
    """The dataclass inside ``X``, ``X | None`` or ``tuple[X, ...]``."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    return next((a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)), None)
