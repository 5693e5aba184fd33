"""Config validation: one clear message per bad key, presets, overrides, grid variants."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from search.config import changed_keys, load_experiment, parse_overrides, read_yaml
from search.downstream_config import DownstreamConfig
from trainables.errors import ConfigError
from trainables.settings import RECIPES, PretrainTrial, validate

BASE: dict[str, Any] = {
    "name": "unit",
    "storage_path": "/tmp/medseg-unit",
    "classification": {"root": "/data/imagenet"},
    "pretrain": {"model": "resnet50"},
    "score": {"targets": [{"name": "acdc", "root": "/data/acdc"}]},
}


def _load(mutate=None, overrides=()):
    raw = copy.deepcopy(BASE)
    if mutate:
        mutate(raw)
    return load_experiment(raw=raw, overrides=overrides, materialise_demo=False)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["pretrain"].update(lrr=0.1),
            r"unknown key 'pretrain.lrr' \(did you mean 'lr'\? valid keys here: .*weight_decay",
        ),
        (lambda c: c.update(tunes={}), r"unknown key 'tunes' \(did you mean 'tune'\?"),
        (
            lambda c: c["pretrain"].update(epochs="ten"),
            r"pretrain.epochs='ten': Input should be a valid integer",
        ),
        (
            lambda c: c["pretrain"].update(epochs=True),
            r"pretrain.epochs=True: Input should be a valid integer",
        ),
        (lambda c: c["pretrain"].update(lr=-1), r"pretrain.lr=-1: Input should be greater than 0"),
        (
            lambda c: c["pretrain"].update(recipe="fancy"),
            r"pretrain.recipe='fancy': Input should be 'simple' or 'advanced'",
        ),
        (
            lambda c: c["score"].update(distance="l1"),
            r"score.distance='l1': Input should be 'cosine', 'mse' or 'pearson'",
        ),
        (lambda c: c["score"].update(views="random"), r"Input should be 'paper' or 'per_image'"),
        (lambda c: c["score"].update(level=2), r"score.level=2: Input should be less than or equal to -1"),
        (
            lambda c: c["score"].update(n_images=1),
            r"score.n_images=1: Input should be greater than or equal to 2",
        ),
        (
            lambda c: c["score"]["targets"][0].update(name="a b"),
            r"target name 'a b' must start with a letter",
        ),
        (lambda c: c["score"].update(targets=[]), r"at least one target set is needed"),
        (
            lambda c: c["pretrain"].update(batch_size=100, micro_batch_size=30),
            r"pretrain: batch_size \(100\) must be a multiple of micro_batch_size \(30\)",
        ),
        (
            lambda c: c["pretrain"].update(recipe="advanced", batch_size=9, micro_batch_size=3),
            r"must be even with Mixup/CutMix",
        ),
        (lambda c: c["classification"].update(on_bad_image="ignore"), r"Input should be 'skip' or 'error'"),
        (lambda c: c.pop("pretrain"), r"missing required key 'pretrain'"),
        (lambda c: c.update(name="my exp/1"), r"becomes a folder name"),
        (
            lambda c: c.update(tune={"grid": {"lr": [1]}}),
            r"grid key 'lr' must be a dotted key of a trial section",
        ),
        (
            lambda c: c.update(tune={"grid": {"pretrain.lr": [0.1, -2]}}),
            r"trial pretrain.lr=-2\).*pretrain.lr=-2: Input should be greater than 0",
        ),
        (lambda c: c.update(tune={"grid": {"pretrain.lrr": [0.1]}}), r"unknown key 'pretrain.lrr'"),
    ],
)
def test_bad_configs_are_refused_on_one_line_naming_key_value_and_choices(mutate, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        _load(mutate)
    assert "\n" not in str(raised.value)


def test_recipes_are_exactly_the_papers() -> None:
    simple = _load(lambda c: c["pretrain"].update(recipe="simple")).config.pretrain
    advanced = _load(lambda c: c["pretrain"].update(recipe="advanced")).config.pretrain
    for settings in (simple, advanced):
        assert (settings.lr, settings.weight_decay, settings.betas) == (4e-3, 0.05, (0.9, 0.999))
        assert (settings.label_smoothing, settings.batch_size, settings.warmup_epochs) == (0.1, 4096, 20)
        assert (settings.warmup_lr_ratio, settings.min_lr, settings.rrc_scale, settings.hflip) == (
            1e-6,
            1e-6,
            (0.8, 1.0),
            0.5,
        )
        assert settings.image_size == 224 and settings.normalize == "imagenet"
    assert (
        simple.randaugment,
        simple.mixup_alpha,
        simple.cutmix_alpha,
        simple.random_erasing,
        simple.drop_path_rate,
    ) == (None, 0, 0, 0, 0)
    assert advanced.randaugment == "rand-m9-n2"  # RandAugment, 2 ops, magnitude 9
    assert (
        advanced.mixup_alpha,
        advanced.cutmix_alpha,
        advanced.random_erasing,
        advanced.drop_path_rate,
    ) == (0.8, 1.0, 0.25, 0.1)
    assert set(RECIPES) == {"simple", "advanced"}


def test_explicit_keys_win_over_the_recipe_preset() -> None:
    settings = _load(lambda c: c["pretrain"].update(recipe="advanced", mixup_alpha=0.2)).config.pretrain
    assert settings.mixup_alpha == 0.2 and settings.cutmix_alpha == 1.0


def test_overrides_are_parsed_as_yaml_and_reach_nested_keys() -> None:
    experiment = _load(
        overrides=[
            "pretrain.lr=4e-4",
            "pretrain.epochs=5",
            "pretrain.warmup_epochs=1",
            "score.pooled=false",
            "name=other",
        ]
    )
    assert experiment.config.pretrain.lr == 4e-4
    assert experiment.config.pretrain.epochs == 5
    assert experiment.config.score.pooled is False
    assert experiment.path == Path("/tmp/medseg-unit/other")
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        parse_overrides(["pretrain.lr"])


def test_relative_paths_become_absolute(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    experiment = _load(lambda c: c["classification"].update(root="data/imagenet"))
    assert experiment.config.classification.root == str(tmp_path / "data" / "imagenet")


def test_grid_gives_each_trial_its_own_recipe_preset() -> None:
    experiment = _load(
        lambda c: c.update(
            tune={"grid": {"pretrain.recipe": ["simple", "advanced"], "pretrain.seed": [0, 1]}}
        )
    )
    trials = [PretrainTrial.from_mapping(v) for v in experiment.variants]
    assert len(trials) == 4
    assert sorted((t.pretrain.recipe, t.pretrain.seed, t.pretrain.mixup_alpha) for t in trials) == [
        ("advanced", 0, 0.8),
        ("advanced", 1, 0.8),
        ("simple", 0, 0.0),
        ("simple", 1, 0.0),
    ]


def test_resolved_config_holds_every_default() -> None:
    resolved = _load().resolved()
    assert resolved["pretrain"]["drop_path_rate"] == 0.0
    assert resolved["score"]["margin"] == 0.5 and resolved["score"]["level"] == -2
    assert resolved["tune"]["scheduler"] == "peak" and resolved["peak"]["metric"] == "robustness"


def test_changed_keys_lists_dotted_paths() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}}
    assert changed_keys(old, {"a": 1, "b": {"c": 5, "d": 3}, "e": 0}) == ["b.c", "e"]


def test_shipped_configs_are_valid() -> None:
    from search.pipeline import load_pipeline

    repo = Path(__file__).resolve().parents[1]
    files = sorted((repo / "configs").rglob("*.yaml"))
    assert files
    for path in files:
        if "pipeline" in path.stem:
            pipeline = load_pipeline(path, materialise_demo=False)
            assert pipeline.pretrain.config.name == "pretrain"
        elif path.parent.name == "downstream":
            validate(DownstreamConfig, read_yaml(path), str(path))
        else:
            load_experiment(path, materialise_demo=False)
