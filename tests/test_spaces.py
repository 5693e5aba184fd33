"""Declarative search spaces: validation, Ray domains, Optuna define-by-run, Optuna kill and restore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray import tune

from search.cli import main
from search.config import load_experiment
from search.spaces import parse_space
from trainables.errors import ConfigError
from trainables.settings import UNSET, drop_unset

SECTIONS = ("pretrain", "classification", "score")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("space", "search", "message"),
    [
        ({"pretrain.lr": {"uniform": [0.1, 0.01]}}, "random", "low must be below high"),
        ({"pretrain.lr": {"uniform": [0.1, 0.1]}}, "random", "low must be below high"),
        ({"pretrain.lr": {"loguniform": [0.0, 0.1]}}, "optuna", "0 < low"),
        ({"pretrain.recipe": {"choice": []}}, "random", "at least one value"),
        ({"pretrain.lr": {"normal": [0, 1]}}, "random", "unknown distribution 'normal'"),
        ({"pretrain.seed": {"grid": [0, 1]}}, "optuna", "use choice instead of grid"),
        ({"pretrain.epochs": {"randint": [1.5, 4]}}, "random", "integers"),
        ({"pretrain.lr": {"uniform": [0, "a"]}}, "random", r"\[low, high\] numbers"),
        ({"pretrain.lr": {"uniform": [0, 1], "choice": [1]}}, "random", "exactly one distribution"),
        ({"pretrain.lr": 0.1}, "random", "give one distribution"),
        ({"lr": {"uniform": [0, 1]}}, "random", "dotted keys of a trial section"),
        ({"peak.patience": {"randint": [1, 3]}}, "random", "dotted keys of a trial section"),
        (
            {"pretrain.drop_path_rate": {"uniform": [0, 0.2], "when": {"pretrain.recipe": "advanced"}}},
            "random",
            "must be another unconditional choice or grid key",
        ),
        (
            {
                "pretrain.recipe": {"choice": ["simple", "advanced"]},
                "pretrain.drop_path_rate": {"uniform": [0, 0.2], "when": {"pretrain.recipe": "fancy"}},
            },
            "random",
            "never takes",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_key_and_the_fix(space, search, message) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_space(space, search, SECTIONS)
    assert "\n" not in str(caught.value) and next(iter(space)) in str(caught.value)


CONDITIONAL = {
    "pretrain.recipe": {"choice": ["simple", "advanced"]},
    "pretrain.drop_path_rate": {"uniform": [0.05, 0.2], "when": {"pretrain.recipe": "advanced"}},
    "pretrain.lr": {"loguniform": [1e-4, 1e-2]},
    "pretrain.warmup_epochs": {"randint": [0, 2]},
}


def _resolved(space: dict, seed: int, samples: int) -> list[dict]:
    """``samples`` draws of ``space`` by Ray's variant generator, as a seeded random search makes them."""
    import numpy as np
    from ray.tune.search.variant_generator import generate_variants

    nested: dict = {}
    for key, domain in parse_space(space, "random", SECTIONS).ray_domains().items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = domain
    random_state = np.random.default_rng(seed)
    return [
        spec["config"]
        for _ in range(samples)
        for _, spec in generate_variants({"config": nested}, random_state=random_state)
    ]


def test_ray_domains_sample_within_bounds_and_conditions_decide_per_trial() -> None:
    configs = _resolved(CONDITIONAL, seed=0, samples=40)
    recipes = {c["pretrain"]["recipe"] for c in configs}
    assert recipes == {"simple", "advanced"}
    for config in configs:
        pretrain = config["pretrain"]
        assert 1e-4 <= pretrain["lr"] <= 1e-2 and pretrain["warmup_epochs"] in (0, 1, 2)
        if pretrain["recipe"] == "advanced":
            assert 0.05 <= pretrain["drop_path_rate"] <= 0.2
        else:
            assert pretrain["drop_path_rate"] == UNSET
            assert "drop_path_rate" not in drop_unset(config)["pretrain"]
    assert {c["pretrain"]["warmup_epochs"] for c in configs} == {0, 1, 2}  # randint includes high


def test_grid_dimensions_enumerate_every_value() -> None:
    configs = _resolved({"pretrain.seed": {"grid": [0, 1, 2]}}, seed=0, samples=1)
    assert [c["pretrain"]["seed"] for c in configs] == [0, 1, 2]


def test_optuna_define_by_run_asks_conditional_keys_only_where_they_apply() -> None:
    import optuna

    space = parse_space(CONDITIONAL, "optuna", SECTIONS).define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        space(trial)
        params = trial.params
        seen.add(params["pretrain/recipe"])
        assert ("pretrain/drop_path_rate" in params) == (params["pretrain/recipe"] == "advanced")
        assert 1e-4 <= params["pretrain/lr"] <= 1e-2 and params["pretrain/warmup_epochs"] in (0, 1, 2)
        study.tell(trial, params["pretrain/lr"])
    assert seen == {"simple", "advanced"}
    lr = study.trials[0].distributions["pretrain/lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log


def test_space_bounds_are_validated_as_trials_before_anything_starts(make_config) -> None:
    config = make_config(
        "bad-bound", tune={"search": "random", "space": {"pretrain.lr": {"uniform": [-1, 1]}}}
    )
    with pytest.raises(ConfigError, match=r"tune.space pretrain.lr=-1.*lr") as caught:
        load_experiment(config)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("tune_settings", "message"),
    [
        ({"search": "optuna", "grid": {"pretrain.recipe": ["simple"]}, "space": CONDITIONAL}, "tune.grid"),
        ({"search": "random"}, "needs a tune.space"),
        ({"search": "bayes"}, "search"),
        ({"num_samples": 0}, "num_samples"),
        ({"time_budget_s": 0}, "time_budget_s"),
    ],
)
def test_search_settings_are_checked(make_config, tune_settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment(make_config("bad-search", tune=tune_settings))


def test_trial_count_follows_the_search(make_config) -> None:
    grid = load_experiment(
        make_config(
            "count",
            tune={
                "grid": {"pretrain.recipe": ["simple", "advanced"]},
                "search": "random",
                "num_samples": 3,
                "space": {"pretrain.lr": {"uniform": [0.001, 0.01]}, "pretrain.seed": {"grid": [0, 1]}},
            },
        )
    )
    assert grid.trial_count == 2 * 2 * 3
    optuna = load_experiment(
        make_config("count2", tune={"search": "optuna", "num_samples": 5, "space": CONDITIONAL})
    )
    assert optuna.trial_count == 5


def _trial_dirs(experiment: Path) -> list[Path]:
    return sorted(d for d in experiment.iterdir() if (d / "params.json").exists())


def _sampled(trials: list) -> list[tuple]:
    """The sampled values of each trial, in the order the searcher made the trials."""
    ordered = sorted(trials, key=lambda t: int(t.trial_id.rsplit("_", 1)[1]))
    keys = ("recipe", "lr", "drop_path_rate", "warmup_epochs")
    return [tuple(t.config["pretrain"].get(key) for key in keys) for t in ordered]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("search", ["optuna", "random"])
def test_a_search_killed_and_restored_ends_with_exactly_its_samples(
    tmp_path, make_config, ray_session, search
) -> None:
    config = make_config(
        search,
        pretrain__epochs=2,
        tune={
            "search": search,
            "num_samples": 6,
            "seed": 3,
            "max_concurrent_trials": 2,
            "scheduler": "fifo",
            "space": CONDITIONAL,
        },
    )
    experiment = tmp_path / "results" / search
    driver = subprocess.Popen(
        [sys.executable, "-m", "search", "pretrain", "--config", str(config)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (experiment.exists() and len(_trial_dirs(experiment)) >= 3):
            assert driver.poll() is None, "the search ended before it could be killed"
            assert time.monotonic() < deadline, "the search did not start 3 trials in time"
            time.sleep(0.1)
        time.sleep(3)  # let Tune snapshot the searcher with trials in flight
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        time.sleep(1)
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    started = len(_trial_dirs(experiment))
    assert started < 6

    assert main(["pretrain", "--config", str(config)]) == 0
    analysis = tune.ExperimentAnalysis(str(experiment))
    assert len(analysis.trials) == 6 and {t.status for t in analysis.trials} == {"TERMINATED"}
    assert len(_trial_dirs(experiment)) == 6
    lrs = [t.config["pretrain"]["lr"] for t in analysis.trials]
    assert len(set(lrs)) == 6 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    for trial in analysis.trials:
        pretrain = drop_unset(trial.config)["pretrain"]  # random search marks a key whose condition fails
        assert ("drop_path_rate" in pretrain) == (pretrain["recipe"] == "advanced")
        assert "__fn_ph" not in trial.trial_id + str(trial.path)  # no Ray placeholder in trial names
    if search == "random":  # seeded sampling: the restored search drew what an uninterrupted one draws
        uninterrupted = tmp_path / "uninterrupted.yaml"
        uninterrupted.write_text(config.read_text())
        assert main(["pretrain", "--config", str(uninterrupted), "--name", "uninterrupted"]) == 0
        reference = tune.ExperimentAnalysis(str(tmp_path / "results" / "uninterrupted")).trials
        assert _sampled(analysis.trials) == _sampled(reference)
