"""Downstream experiment configs, and the trial space they span with a selection manifest.

A downstream config holds the trial sections that
:class:`trainables.finetune_settings.FinetuneTrial` validates (``data``,
``finetune``) plus ``trials`` (which checkpoints, modes and seeds) and the
experiment's own keys (``name``, ``storage_path``, ``tune``). The trial space
is: checkpoint (the manifest's entries of the chosen kinds, plus optional
baselines: random initialisation and user-given files) x mode (``finetune``,
``frozen``) x seed x ``tune.grid``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass as plain_dataclass
from dataclasses import field as plain_field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter, field_validator
from pydantic.dataclasses import dataclass

from search.config import NAME_PATTERN, checked_space, parse_overrides, read_yaml, set_dotted
from search.demo_data import materialise
from search.spaces import SearchSpace, count_trials
from search.storage import check_writable
from trainables.errors import ConfigError, DataError
from trainables.finetune_settings import FinetuneSettings, FinetuneTrial, SegmentationData, SourceCheckpoint
from trainables.settings import DEMO_SCHEME, Bool, Float, Int, absolute_path, validate

_STRICT = ConfigDict(extra="forbid")
DOWNSTREAM_SECTIONS = ("data", "finetune")


@dataclass(frozen=True, config=_STRICT)
class FileSource:
    """A user-given encoder checkpoint (ours, or a plain timm state_dict)."""

    path: str
    encoder: str
    normalize: Literal["imagenet", "scale_only"] = "imagenet"

    _path = field_validator("path")(absolute_path)


@dataclass(frozen=True, config=_STRICT)
class DownstreamTrials:
    """Which encoders, modes and seeds become trials."""

    kinds: tuple[Literal["peak", "final", "best_accuracy"], ...] = ("peak", "final", "best_accuracy")
    modes: tuple[Literal["finetune", "frozen"], ...] = ("finetune", "frozen")
    seeds: tuple[Int, ...] = (0,)
    random_init: Bool = False
    files: tuple[FileSource, ...] = ()

    @field_validator("modes", "seeds")
    @classmethod
    def _not_empty(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        if not value:
            raise ValueError("needs at least one value")
        return value


@dataclass(frozen=True, config=_STRICT)
class DownstreamTune:
    """How Ray Tune runs the downstream trials."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: Literal["grid", "random", "optuna"] = "grid"
    space: dict[str, Any] = Field(default_factory=dict)
    num_samples: Int = Field(default=1, ge=1)
    seed: Int = 0
    time_budget_s: Float | None = Field(default=None, gt=0)
    cpus_per_trial: Float = Field(default=1.0, gt=0)
    gpus_per_trial: Float = Field(default=0.0, ge=0)
    custom_resources: dict[str, Float] = Field(default_factory=dict)
    autoscaler: Bool = False  # True: a trial no node can hold now waits for a new node
    workers_per_trial: Int = Field(default=1, ge=1)
    max_concurrent_trials: Int | None = Field(default=None, ge=1)
    checkpoint_num_to_keep: Int = Field(default=1, ge=1)
    max_failures: Int = Field(default=0, ge=-1)

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if key.split(".")[0] not in DOWNSTREAM_SECTIONS or "." not in key or not values:
                raise ValueError(
                    f"grid key {key!r} must be a dotted key of data or finetune with a list of values"
                )
        return grid


@dataclass(frozen=True, config=_STRICT)
class DownstreamConfig:
    """A whole downstream experiment."""

    name: str
    data: SegmentationData
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    trials: DownstreamTrials = Field(default_factory=DownstreamTrials)
    tune: DownstreamTune = Field(default_factory=DownstreamTune)
    storage_path: str = "./results"

    _storage = field_validator("storage_path")(absolute_path)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"name {value!r} becomes a folder name: use letters, digits, '_', '-' and '.'")
        return value


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A selection manifest (``medseg-search select``), checked for the fields downstream needs."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read selection manifest {path} ({exc}): write one with medseg-search select"
        ) from None
    entries = manifest.get("selected") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(
            f"{path} is not a selection manifest (no 'selected' list): write one with medseg-search select"
        )
    for entry in entries:
        missing = [k for k in ("kind", "encoder", "checkpoint") if k not in entry]
        if missing:
            raise ConfigError(f"selection manifest {path} has an entry without {missing}: {entry}")
    return manifest


def sources(config: DownstreamConfig, manifest: Mapping[str, Any]) -> list[SourceCheckpoint]:
    """The checkpoints that become trials: the manifest's entries of the chosen kinds, then baselines."""
    found: list[SourceCheckpoint] = []
    for entry in manifest["selected"]:
        if entry["kind"] in config.trials.kinds:
            found.append(
                SourceCheckpoint(
                    kind=entry["kind"],
                    encoder=entry["encoder"],
                    path=entry["checkpoint"],
                    weights_key=entry.get("weights_key", "model"),
                    normalize=entry.get("normalize", "imagenet"),
                    trial_id=str(entry.get("trial_id", "")),
                    trial_name=str(entry.get("trial_name", "")),
                    recipe=str(entry.get("recipe", "")),
                    epoch=entry.get("epoch"),
                    score=entry.get("score"),
                )
            )
    if config.trials.random_init:
        for encoder, normalize in dict.fromkeys((s.encoder, s.normalize) for s in found):
            found.append(SourceCheckpoint(kind="random_init", encoder=encoder, normalize=normalize))
    for file in config.trials.files:
        found.append(
            SourceCheckpoint(kind="file", encoder=file.encoder, path=file.path, normalize=file.normalize)
        )
    if not found:
        raise ConfigError(
            f"no checkpoint to fine-tune: the manifest holds none of the kinds {list(config.trials.kinds)} "
            "and no baseline is asked for (trials.random_init, trials.files)"
        )
    return found


def plain(value: Any) -> Any:
    return TypeAdapter(type(value)).dump_python(value, mode="json")


@plain_dataclass(frozen=True)
class DownstreamExperiment:
    """A validated downstream experiment with its manifest and every trial variant."""

    config: DownstreamConfig
    raw: Mapping[str, Any]
    manifest_path: str
    manifest: Mapping[str, Any]
    sources: tuple[SourceCheckpoint, ...]
    space: SearchSpace = plain_field(default_factory=lambda: SearchSpace(()))

    @property
    def path(self) -> Path:
        return Path(self.config.storage_path) / self.config.name

    def resolved(self) -> dict[str, Any]:
        """The saved config: every default, and which manifest (by path and content hash)."""
        digest = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]
        return {**plain(self.config), "manifest": {"path": self.manifest_path, "sha256": digest}}

    def base_trial(self) -> dict[str, Any]:
        resolved = plain(self.config)
        return {
            "data": resolved["data"],
            "finetune": dict(self.raw.get("finetune") or {}),
            "workers": self.config.tune.workers_per_trial,
            "cpus_per_worker": self.config.tune.cpus_per_trial,
            "gpus_per_worker": self.config.tune.gpus_per_trial,
            "custom_resources": dict(self.config.tune.custom_resources),
        }

    @property
    def trial_count(self) -> int:
        """How many trials the search runs (every combination ``num_samples`` times; Optuna: the samples)."""
        settings = self.config.tune
        return count_trials(settings.search, settings.num_samples, len(self.trial_configs()), self.space)

    def trial_configs(self) -> list[dict[str, Any]]:
        """One trial config per source x mode x seed x grid combination."""
        grid = self.config.tune.grid
        trials = []
        for source, mode, seed, combo in itertools.product(
            self.sources,
            self.config.trials.modes,
            self.config.trials.seeds,
            itertools.product(*grid.values()) if grid else [()],
        ):
            trial = copy.deepcopy(self.base_trial())
            trial["source"], trial["mode"] = plain(source), mode
            trial["finetune"]["seed"] = seed
            for key, value in zip(grid, combo, strict=True):
                set_dotted(trial, key, value)
            trials.append(trial)
        return trials


def load_downstream(
    path: str | Path | None,
    manifest_path: str | Path,
    overrides: Iterable[str] = (),
    *,
    raw: Mapping[str, Any] | None = None,
    materialise_demo: bool = True,
    demo_dir: Path | None = None,
) -> DownstreamExperiment:
    """Read (or take ``raw``), override and validate the config and the manifest; validate every trial."""
    data = copy.deepcopy(dict(raw)) if raw is not None else read_yaml(path)  # type: ignore[arg-type]
    path = path or "downstream config"
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value)
    config: DownstreamConfig = validate(DownstreamConfig, data, str(path))
    root = str((data.get("data") or {}).get("root", ""))
    if materialise_demo and root.startswith(DEMO_SCHEME):
        check_writable(config.storage_path)
        try:
            data["data"]["root"] = str(materialise(root, demo_dir or Path(config.storage_path) / "demo-data"))
        except KeyError as exc:
            raise ConfigError(str(exc.args[0])) from None
        config = validate(DownstreamConfig, data, str(path))
    manifest = read_manifest(manifest_path)
    experiment = DownstreamExperiment(
        config, data, str(Path(manifest_path).resolve()), manifest, tuple(sources(config, manifest))
    )
    trials = experiment.trial_configs()
    for trial in trials:
        FinetuneTrial.from_mapping(trial, f"{path} (trial {trial['source']['kind']} {trial['mode']})")
    if config.tune.search == "optuna" and len(trials) > 1:
        raise ConfigError(
            f"{path}: search: optuna tunes one downstream setting, but {len(trials)} checkpoint x mode x "
            "seed combinations are selected; narrow trials.kinds, modes and seeds (or the manifest) to "
            "one, or use search: random, which samples the space for every combination"
        )
    space = checked_space(config.tune, DOWNSTREAM_SECTIONS, trials[0], FinetuneTrial, str(path))
    return dataclasses.replace(experiment, space=space)


def check_sources(experiment: DownstreamExperiment) -> None:
    """Every checkpoint file exists (weights are checked strictly when each trial builds its U-Net)."""
    for source in experiment.sources:
        if source.path is not None and not Path(source.path).is_file():
            raise DataError(
                f"checkpoint {source.path} of the manifest "
                f"({source.kind}, {source.trial_name or source.encoder}) "
                "does not exist: rerun medseg-search select, or fix the path"
            )
