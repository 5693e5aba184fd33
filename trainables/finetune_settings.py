"""Validated, frozen settings of one downstream (U-Net fine-tuning) trial.

Defaults follow the paper's recipe: SGD (lr 0.05, momentum 0.9, weight decay
1e-4) with poly decay stepped per batch, Dice loss, 150 epochs, batch 24,
224 x 224.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from trainables.data.formats import FORMATS
from trainables.settings import Bool, Float, Int, absolute_path, validate

_STRICT = ConfigDict(extra="forbid")
_CLASS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
FormatName = Literal["generic", "acdc", "covid_qu", "idrid"]


@dataclass(frozen=True, config=_STRICT)
class SplitSettings:
    """How cases are split (see :mod:`trainables.data.splits`)."""

    mode: Literal["by_case", "slice_blocks"] = "by_case"
    val_fraction: Float = Field(default=0.2, gt=0, lt=1)
    test_fraction: Float = Field(default=0.2, gt=0, lt=1)
    seed: Int = Field(default=0, ge=0)
    file: str | None = None

    @field_validator("file")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)

    @model_validator(mode="after")
    def _room_for_training(self) -> SplitSettings:
        if self.mode == "slice_blocks" and self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave slices for training (sum below 1)")
        return self


@dataclass(frozen=True, config=_STRICT)
class SegmentationData:
    """A medical segmentation set, its classes, split and preprocessing."""

    root: str
    format: FormatName = "generic"
    classes: tuple[str, ...] | None = None
    slice_axis: Int = Field(default=2, ge=0, le=2)
    split: SplitSettings = Field(default_factory=SplitSettings)
    image_size: Int = Field(default=224, ge=32)
    resize: Literal["resize", "crop"] = "resize"
    augment: Literal["none", "basic"] = "basic"
    num_workers: Int = Field(default=2, ge=0)

    _root = field_validator("root")(absolute_path)

    @model_validator(mode="after")
    def _resolve_classes(self) -> SegmentationData:
        classes = self.classes or FORMATS[self.format].classes
        if classes is None:
            raise ValueError(
                "classes is required for the generic format: list every label value's name, "
                "background first, for example [background, tumour]"
            )
        bad = [c for c in classes if not _CLASS_NAME.match(c)]
        if bad or len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(
                f"classes {list(classes)} must be at least 2 unique names of letters, digits and '_' "
                "(they become metric names such as dice_<class>)"
            )
        if self.image_size % 32:
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of 32 (the U-Net downsamples 5 times)"
            )
        object.__setattr__(self, "classes", tuple(classes))
        return self

    @property
    def class_names(self) -> tuple[str, ...]:
        assert self.classes is not None  # resolved by the validator
        return self.classes


@dataclass(frozen=True, config=_STRICT)
class FinetuneSettings:
    """The downstream training recipe."""

    epochs: Int = Field(default=150, ge=1)
    batch_size: Int = Field(default=24, ge=1)
    lr: Float = Field(default=0.05, gt=0)
    momentum: Float = Field(default=0.9, ge=0, lt=1)
    weight_decay: Float = Field(default=1e-4, ge=0)
    poly_power: Float = Field(default=0.9, gt=0)
    loss: Literal["dice", "cross_entropy", "dice_ce"] = "dice"
    freeze_batchnorm: Bool = False
    seed: Int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "off"] = "auto"
    channels_last: Bool = True
    train_batches_per_epoch: Int | None = Field(default=None, ge=1)
    eval_batch_size: Int = Field(default=16, ge=1)
    record_step_losses: Int = Field(default=0, ge=0)


@dataclass(frozen=True, config=_STRICT)
class SourceCheckpoint:
    """Where the encoder comes from: a selected checkpoint, a user's file, or random initialisation."""

    kind: Literal["peak", "final", "best_accuracy", "random_init", "file"]
    encoder: str
    path: str | None = None
    weights_key: str = "model"
    normalize: Literal["imagenet", "scale_only"] = "imagenet"
    trial_id: str = ""
    trial_name: str = ""
    recipe: str = ""
    epoch: Int | None = None
    score: Float | None = None

    @model_validator(mode="after")
    def _path_when_needed(self) -> SourceCheckpoint:
        if self.kind != "random_init" and not self.path:
            raise ValueError(f"a {self.kind!r} source needs the path of its checkpoint")
        return self

    @property
    def label(self) -> str:
        """A short readable name: kind, epoch and trial."""
        epoch = f"@{self.epoch}" if self.epoch is not None else ""
        trial = f"-{self.trial_name}" if self.trial_name else ""
        return f"{self.encoder}-{self.kind}{epoch}{trial}"


@dataclass(frozen=True, config=_STRICT)
class FinetuneTrial:
    """Everything one downstream trial needs; built from the trial's config dict."""

    data: SegmentationData
    finetune: FinetuneSettings
    source: SourceCheckpoint
    mode: Literal["finetune", "frozen"] = "finetune"
    workers: Int = Field(default=1, ge=1)
    cpus_per_worker: Float = Field(default=1.0, gt=0)
    gpus_per_worker: Float = Field(default=0.0, ge=0)
    custom_resources: dict[str, Float] = Field(default_factory=dict)  # per worker, e.g. {big_mem: 1}

    @model_validator(mode="after")
    def _batch_splits_over_workers(self) -> FinetuneTrial:
        if self.finetune.batch_size % self.workers:
            raise ValueError(
                f"finetune.batch_size ({self.finetune.batch_size}) must be a multiple of the "
                f"{self.workers} data-parallel workers: every worker takes an equal share of each batch"
            )
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "trial config") -> FinetuneTrial:
        return validate(cls, data, source)
