"""Experiment configs: YAML in, validated frozen dataclasses out, once, at the boundary.

A config file holds the trial sections that :class:`trainables.settings.PretrainTrial`
validates (``classification``, ``pretrain``, ``score``) plus the experiment's
own keys (``name``, ``storage_path``, ``tune``). ``--set a.b=c`` overrides any
key (the value is parsed as YAML). ``tune.grid`` maps dotted trial keys to
lists of values; every combination is one trial, and every combination is
validated before anything starts.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass as plain_dataclass
from dataclasses import field as plain_field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, field_validator
from pydantic.dataclasses import dataclass

from search.demo_data import materialise
from search.spaces import SearchSpace, count_trials, parse_space
from search.storage import check_writable
from trainables.errors import ConfigError
from trainables.settings import (
    DEMO_SCHEME,
    Bool,
    ClassificationData,
    Float,
    Int,
    PeakSettings,
    PretrainSettings,
    PretrainTrial,
    ScoreSettings,
    absolute_path,
    validate,
)

CONFIG_FILE = "medseg-config.yaml"
TRIAL_SECTIONS = ("classification", "pretrain", "score", "peak")
SPACE_SECTIONS = ("pretrain", "classification", "score")  # not peak: the rule is the scheduler's
_STRICT = ConfigDict(extra="forbid")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, config=_STRICT)
class TuneSettings:
    """How Ray Tune runs the trials."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: Literal["grid", "random", "optuna"] = "grid"
    space: dict[str, Any] = Field(default_factory=dict)
    num_samples: Int = Field(default=1, ge=1)
    seed: Int = 0
    time_budget_s: Float | None = Field(default=None, gt=0)
    max_concurrent_trials: Int | None = Field(default=None, ge=1)
    cpus_per_trial: Float = Field(default=1.0, gt=0)
    gpus_per_trial: Float = Field(default=0.0, ge=0)
    workers_per_trial: Int = Field(default=1, ge=1)
    custom_resources: dict[str, Float] = Field(default_factory=dict)
    autoscaler: Bool = False  # True: a trial no node can hold now waits for a new node
    scheduler: Literal["peak", "fifo"] = "peak"
    checkpoint_num_to_keep: Int | None = Field(default=None, ge=1)
    max_failures: Int = Field(default=0, ge=-1)

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if key.split(".")[0] not in TRIAL_SECTIONS or "." not in key:
                raise ValueError(
                    f"grid key {key!r} must be a dotted key of a trial section "
                    f"({', '.join(TRIAL_SECTIONS)}), such as 'pretrain.lr'"
                )
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
            if key.startswith("peak."):
                raise ValueError(
                    f"grid key {key!r}: the peak rule belongs to the scheduler, which is one for "
                    "all trials; set it in the peak section instead"
                )
        return grid


@dataclass(frozen=True, config=_STRICT)
class ExperimentConfig:
    """A whole pretraining experiment."""

    name: str
    classification: ClassificationData
    pretrain: PretrainSettings
    score: ScoreSettings
    peak: PeakSettings = Field(default_factory=PeakSettings)
    storage_path: str = "./results"
    tune: TuneSettings = Field(default_factory=TuneSettings)

    _storage = field_validator("storage_path")(absolute_path)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"name {value!r} becomes a folder name: use letters, digits, '_', '-' and '.'")
        return value


def _plain(value: Any) -> Any:
    """JSON-like plain data (dicts, lists, str, numbers) of validated settings."""
    return TypeAdapter(type(value)).dump_python(value, mode="json")


@plain_dataclass(frozen=True)
class Experiment:
    """A validated experiment: its config, the raw mapping it came from, and its trials."""

    config: ExperimentConfig
    raw: Mapping[str, Any]
    variants: tuple[dict[str, Any], ...] = plain_field(default=())
    space: SearchSpace = plain_field(default_factory=lambda: SearchSpace(()))

    @property
    def path(self) -> Path:
        """The experiment folder: ``<storage_path>/<name>``."""
        return Path(self.config.storage_path) / self.config.name

    def resolved(self) -> dict[str, Any]:
        """The full config with every default filled in, as saved with the experiment."""
        resolved: dict[str, Any] = _plain(self.config)
        return resolved

    def base_trial(self) -> dict[str, Any]:
        """The trial sections before the grid: paths absolute, recipe presets left to each trial.

        Only the keys the user wrote go into ``pretrain``, so a grid over
        ``pretrain.recipe`` gives each trial its own recipe's preset values.
        """
        resolved = self.resolved()
        trial = {section: resolved[section] for section in TRIAL_SECTIONS}
        trial["pretrain"] = {k: v for k, v in resolved["pretrain"].items() if k in self.raw["pretrain"]}
        settings = self.config.tune
        if settings.workers_per_trial > 1:  # a data-parallel trial places its workers itself
            trial.update(
                workers=settings.workers_per_trial,
                cpus_per_worker=settings.cpus_per_trial,
                gpus_per_worker=settings.gpus_per_trial,
                custom_resources=dict(settings.custom_resources),
                checkpoints_to_keep=settings.checkpoint_num_to_keep,
            )
        return trial

    @property
    def trial_count(self) -> int:
        """How many trials the search runs (grid: every combination, ``num_samples`` times)."""
        settings = self.config.tune
        return count_trials(settings.search, settings.num_samples, len(self.variants), self.space)

    def trial_configs(self) -> list[dict[str, Any]]:
        """One trial config per grid combination (a single one without a grid)."""
        grid = self.config.tune.grid
        combos = itertools.product(*grid.values()) if grid else [()]
        trials = []
        for combo in combos:
            trial = copy.deepcopy(self.base_trial())
            for key, value in zip(grid, combo, strict=True):
                set_dotted(trial, key, value)
            trials.append(trial)
        return trials


def set_dotted(mapping: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = mapping
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"cannot set {dotted!r}: {part!r} holds a {type(child).__name__}, not a mapping"
            )
        node = child
    node[leaf] = value


def parse_overrides(assignments: Iterable[str]) -> list[tuple[str, Any]]:
    """``a.b=c`` strings into (key, YAML-parsed value) pairs."""
    parsed = []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (for example pretrain.lr=0.001), got {assignment!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({exc})") from None
        parsed.append((key.strip(), value))
    return parsed


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return data


def _resolve_demo_roots(raw: dict[str, Any], cache_dir: Path) -> None:
    """Replace ``demo://`` roots by folders of materialised demo data."""

    def resolve(section: Any) -> None:
        if isinstance(section, dict) and str(section.get("root", "")).startswith(DEMO_SCHEME):
            try:
                section["root"] = str(materialise(section["root"], cache_dir))
            except KeyError as exc:
                raise ConfigError(str(exc.args[0])) from None

    resolve(raw.get("classification"))
    for target in (raw.get("score") or {}).get("targets") or []:
        resolve(target)


def load_experiment(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    raw: Mapping[str, Any] | None = None,
    materialise_demo: bool = True,
    demo_dir: Path | None = None,
) -> Experiment:
    """Read, override, validate; materialise demo data; validate every trial variant.

    Raises :class:`ConfigError` before anything starts if any key is unknown,
    any value has a wrong type or range, or any grid combination is invalid.
    """
    source = str(path) if path is not None else "config"
    data = copy.deepcopy(dict(raw)) if raw is not None else read_yaml(path)  # type: ignore[arg-type]
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value)
    config = validate(ExperimentConfig, data, source)
    if materialise_demo:
        check_writable(config.storage_path)
        _resolve_demo_roots(data, demo_dir or Path(config.storage_path) / "demo-data")
        config = validate(ExperimentConfig, data, source)
    experiment = Experiment(config=config, raw=data)
    variants = []
    for trial in experiment.trial_configs():
        validate(PretrainTrial, trial, f"{source} (trial {_describe_variant(trial, config.tune.grid)})")
        variants.append(trial)
    space = checked_space(config.tune, SPACE_SECTIONS, variants[0], PretrainTrial, source)
    return Experiment(config=config, raw=data, variants=tuple(variants), space=space)


def checked_space(
    settings: Any, sections: tuple[str, ...], base: Mapping[str, Any], trial_class: Any, source: str
) -> SearchSpace:
    """A stage's ``tune.space``, refused up front when invalid or when a bound makes an invalid trial."""
    space = parse_space(settings.space, settings.search, sections, f"{source}: tune.space")
    if settings.search == "optuna" and settings.grid:
        raise ConfigError(
            f"{source}: tune.grid enumerates values, which Optuna does not: move "
            f"{', '.join(settings.grid)} into tune.space as choice, or use search: random"
        )
    if settings.search != "grid" and not space.dimensions:
        raise ConfigError(f"{source}: search: {settings.search} needs a tune.space to sample from")
    for label, trial in space.variants_to_validate(base):
        validate(trial_class, trial, f"{source} (tune.space {label})")
    return space


def _describe_variant(trial: dict[str, Any], grid: Mapping[str, Any]) -> str:
    values = []
    for key in grid:
        node: Any = trial
        for part in key.split("."):
            node = node[part]
        values.append(f"{key}={node!r}")
    return ", ".join(values) or "base"


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    changed = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changed.extend(changed_keys(a, b, dotted + "."))
        elif a != b:
            changed.append(dotted)
    return changed


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)
