"""Declarative search spaces: YAML in, Ray Tune domains or an Optuna define-by-run function out.

A stage's ``tune.space`` maps dotted trial keys to one distribution each::

    tune:
      search: optuna          # grid (default), random or optuna
      num_samples: 6
      seed: 0
      space:
        pretrain.lr: {loguniform: [1.0e-4, 1.0e-2]}
        pretrain.recipe: {choice: [simple, advanced]}
        pretrain.drop_path_rate: {uniform: [0.0, 0.2], when: {pretrain.recipe: advanced}}
        pretrain.warmup_epochs: {randint: [1, 5]}       # both ends included
        pretrain.seed: {grid: [0, 1]}                   # every value (grid and random only)

``when`` makes a key conditional: it is sampled only for trials whose value
of another (unconditional ``choice`` or ``grid``) key is among the given
values; other trials keep the key's default. With ``search: optuna`` the
space becomes a define-by-run function for Ray's ``OptunaSearch`` (TPE,
seeded), which sees conditional keys only where they apply. Invalid specs
(low >= high, an empty choice, an unknown distribution, a grid with Optuna,
a condition on an unknown key) raise :class:`ConfigError` before anything
starts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from trainables.errors import ConfigError
from trainables.settings import UNSET

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint", "grid")
SearchKind = Literal["grid", "random", "optuna"]


@dataclass(frozen=True)
class Dimension:
    """One searched key: its distribution, arguments and (optional) condition."""

    key: str
    distribution: str
    values: tuple[Any, ...]
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def low(self) -> Any:
        return self.values[0]

    @property
    def high(self) -> Any:
        return self.values[1]

    def applies(self, config: Mapping[str, Any]) -> bool:
        """Whether the condition holds for a (nested) trial config."""
        return all(_get_dotted(config, key) in allowed for key, allowed in self.when)

    def extremes(self) -> list[Any]:
        """Values that bound what this dimension can produce (validated before anything starts)."""
        if self.distribution in ("choice", "grid"):
            return list(self.values)
        return [self.low, self.high]

    def ray_domain(self) -> Any:
        from ray import tune

        domain = {
            "choice": lambda: tune.choice(list(self.values)),
            "grid": lambda: tune.grid_search(list(self.values)),
            "uniform": lambda: tune.uniform(self.low, self.high),
            "loguniform": lambda: tune.loguniform(self.low, self.high),
            "randint": lambda: tune.randint(self.low, self.high + 1),
        }[self.distribution]()
        if not self.when:
            return domain
        return _conditional_domain_class()(self, domain)

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this dimension's value."""
        name = self.key.replace(".", "/")  # Ray unflattens '/' into the nested config
        if self.distribution == "choice":
            return trial.suggest_categorical(name, list(self.values))
        if self.distribution == "randint":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_float(name, self.low, self.high, log=self.distribution == "loguniform")


@dataclass(frozen=True)
class SearchSpace:
    """The validated ``tune.space`` of a stage, in the order the keys were written."""

    dimensions: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]

    def ray_domains(self) -> dict[str, Any]:
        """Dotted key -> Ray Tune domain (grid, random search; the searcher's ``random_state`` seeds them)."""
        return {d.key: d.ray_domain() for d in self.dimensions}

    def define_by_run(self) -> Callable[[Any], None]:
        """The Optuna define-by-run function: unconditional keys first, then those whose condition holds."""
        return DefineByRun(self.dimensions)

    def variants_to_validate(self, base: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """Trial configs that put each dimension at each of its extremes (for validation up front)."""
        import copy

        variants = []
        for dimension in self.dimensions:
            for value in dimension.extremes():
                trial = copy.deepcopy(dict(base))
                _set_dotted(trial, dimension.key, value)
                variants.append((f"{dimension.key}={value!r}", trial))
        return variants


@functools.cache
def _conditional_domain_class() -> type:
    """``ConditionalDomain``: a Ray domain that samples another where a dimension's condition holds.

    Built on first use, so that loading a config does not import Ray; reachable as
    ``search.spaces.ConditionalDomain`` (module ``__getattr__``), so Tune's snapshots
    pickle it by reference.
    """
    from ray.tune.search.sample import Domain
    from ray.tune.search.variant_generator import RecursiveDependencyError

    class ConditionalDomain(Domain):
        """The dimension's sample where its condition holds, else UNSET.

        A :class:`Domain`, not a ``tune.sample_from`` function: Tune resolves
        sample_from functions per trial, with a generator that starts afresh
        after a restore (a restored search repeats earlier draws), and names
        trials after their placeholders. A domain is sampled by the variant
        generator with the searcher's own random state, which every experiment
        snapshot saves.
        """

        def __init__(self, dimension: Dimension, inner: Any) -> None:
            self.dimension, self.inner = dimension, inner

        def sample(self, config: Any = None, size: int = 1, random_state: Any = None) -> Any:
            trial_config = config["config"]  # the generator passes the (guarded) experiment spec
            for key, _ in self.dimension.when:
                value = _get_dotted(trial_config, key)
                if isinstance(value, Domain) or (isinstance(value, Mapping) and "grid_search" in value):
                    # the generator samples that key first, then asks again
                    raise RecursiveDependencyError(f"{self.dimension.key} waits for {key}")
            if not self.dimension.applies(trial_config):
                return UNSET
            return _plain_number(self.inner.sample(size=size, random_state=random_state))

        def is_valid(self, value: Any) -> bool:
            return value == UNSET or bool(self.inner.is_valid(value))

        @property
        def domain_str(self) -> str:
            return f"{self.inner.domain_str} when {dict(self.dimension.when)}"

    ConditionalDomain.__module__, ConditionalDomain.__qualname__ = __name__, "ConditionalDomain"
    return ConditionalDomain


def __getattr__(name: str) -> Any:
    if name == "ConditionalDomain":
        return _conditional_domain_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DefineByRun:
    """Optuna's view of a space (picklable, as Tune saves the searcher with every snapshot)."""

    def __init__(self, dimensions: tuple[Dimension, ...]) -> None:
        self.dimensions = dimensions

    def __call__(self, trial: Any) -> None:
        chosen: dict[str, Any] = {}
        for dimension in self.dimensions:
            if not dimension.when:
                _set_dotted(chosen, dimension.key, dimension.suggest(trial))
        for dimension in self.dimensions:
            if dimension.when and dimension.applies(chosen):
                dimension.suggest(trial)


def parse_space(
    raw: Mapping[str, Any], search: SearchKind, allowed_sections: tuple[str, ...], source: str = "tune.space"
) -> SearchSpace:
    """Validate a ``tune.space`` mapping; raise a one-line ConfigError naming the key and the fix."""
    dimensions: list[Dimension] = []
    for key, spec in raw.items():
        where = f"{source}.{key}"
        if "." not in key or key.split(".")[0] not in allowed_sections:
            raise ConfigError(
                f"{where}: search keys are dotted keys of a trial section "
                f"({', '.join(allowed_sections)}), such as '{allowed_sections[0]}.lr'"
            )
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f"{where}: give one distribution, such as {{uniform: [0.0, 0.1]}}, got {spec!r}"
            )
        spec = dict(spec)
        when = spec.pop("when", None)
        if len(spec) != 1:
            raise ConfigError(
                f"{where}: give exactly one distribution of {', '.join(DISTRIBUTIONS)} (plus an optional "
                f"'when'), got {sorted(spec) or 'none'}"
            )
        ((distribution, values),) = spec.items()
        dimensions.append(
            Dimension(
                key, distribution, _check_values(where, distribution, values, search), _when(where, when)
            )
        )
    _check_conditions(dimensions, source)
    for dimension in dimensions:
        if dimension.when and dimension.distribution == "grid":
            raise ConfigError(f"{source}.{dimension.key}: a grid cannot be conditional; use choice")
    return SearchSpace(tuple(dimensions))


def _check_values(where: str, distribution: str, values: Any, search: SearchKind) -> tuple[Any, ...]:
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: unknown distribution {distribution!r}; use one of {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{where}: {distribution} takes a list, got {values!r}")
    if distribution in ("choice", "grid"):
        if not values:
            raise ConfigError(f"{where}: {distribution} needs at least one value")
        if distribution == "grid" and search == "optuna":
            raise ConfigError(
                f"{where}: Optuna samples, it does not enumerate: use choice instead of grid, "
                "or search: grid / random"
            )
        return tuple(values)
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ConfigError(f"{where}: {distribution} takes [low, high] numbers, got {values!r}")
    low, high = values
    if distribution == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: randint takes integers [low, high] (both included), got {values!r}")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got [{low}, {high}]")
    if distribution == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < low, got {low}")
    return (low, high)


def _when(where: str, when: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(f"{where}.when: give {{other.key: value or [values]}}, got {when!r}")
    return tuple(
        (str(key), tuple(allowed) if isinstance(allowed, (list, tuple)) else (allowed,))
        for key, allowed in when.items()
    )


def _check_conditions(dimensions: list[Dimension], source: str) -> None:
    categorical = {d.key: d for d in dimensions if not d.when and d.distribution in ("choice", "grid")}
    for dimension in dimensions:
        for key, allowed in dimension.when:
            condition = categorical.get(key)
            if condition is None:
                raise ConfigError(
                    f"{source}.{dimension.key}.when: {key!r} must be another unconditional choice or grid "
                    f"key of the space (have: {', '.join(categorical) or 'none'})"
                )
            unknown = [v for v in allowed if v not in condition.values]
            if unknown:
                raise ConfigError(
                    f"{source}.{dimension.key}.when: {key} never takes {unknown}; "
                    f"it takes {list(condition.values)}"
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain_number(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _get_dotted(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def build_search_alg(
    search: SearchKind, space: SearchSpace, metric: str, mode: str, seed: int, max_concurrent: int | None
) -> Any:
    """The Tune searcher of a stage: OptunaSearch, or for grid and random a BasicVariantGenerator whose
    random state (``seed``, saved with every experiment snapshot) draws every sampled dimension."""
    if search in ("grid", "random"):
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(
        space=space.define_by_run(),
        metric=metric,
        mode=mode,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )


def count_trials(search: SearchKind, num_samples: int, combinations: int, space: SearchSpace) -> int:
    """How many trials a search runs: Optuna ``num_samples``; otherwise every combination of the
    enumerated values (``combinations`` times each ``grid`` dimension) ``num_samples`` times."""
    if search == "optuna":
        return num_samples
    grids = [len(d.values) for d in space.dimensions if d.distribution == "grid"]
    return combinations * math.prod(grids) * num_samples
