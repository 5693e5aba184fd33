"""Shared fixtures: offline environment, real demo data made once, one Ray session for all tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real demo sets (MNIST digits in ImageNet layout, MNI152 brain in the generic layout)."""
    from search.demo_data import materialise

    cache = tmp_path_factory.mktemp("demo-data")
    return {
        "mnist": materialise("demo://mnist", cache),
        "brain": materialise("demo://mni152-brain", cache),
    }


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that needs it (ray.init costs ~5 s)."""
    import ray

    ray.init(address="local", num_cpus=2, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def small_imagenet(tmp_path: Path, demo_data: dict[str, Path]) -> Path:
    """A 2-class ImageNet-layout set of 16 + 8 real MNIST digits (copies), to corrupt at will."""
    import shutil

    root = tmp_path / "small-imagenet"
    for split, count in (("train", 8), ("val", 4)):
        for digit in ("digit_0", "digit_1"):
            source = sorted((demo_data["mnist"] / split / digit).iterdir())[:count]
            (root / split / digit).mkdir(parents=True)
            for path in source:
                shutil.copy(path, root / split / digit / path.name)
    return root


@pytest.fixture
def make_config(tmp_path: Path, demo_data: dict[str, Path]):
    """Write a tiny experiment config on the demo data; keyword overrides use ``__`` for dots.

    ``make_config("it", pretrain__epochs=3, tune={"grid": ...})`` -> path of the YAML file.
    """
    import yaml

    def make(name: str = "tiny", **overrides):
        config = {
            "name": name,
            "storage_path": str(tmp_path / "results"),
            "classification": {"root": str(demo_data["mnist"]), "num_workers": 0},
            "pretrain": {
                "model": "resnet10t",
                "epochs": 2,
                "image_size": 32,
                "batch_size": 16,
                "micro_batch_size": 8,
                "warmup_epochs": 1,
                "train_batches_per_epoch": 2,
                "val_batches": 1,
            },
            "score": {
                "targets": [{"name": "brain", "root": str(demo_data["brain"])}],
                "n_images": 8,
                "image_size": 32,
            },
        }
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split("__")
            node = config
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def write_tiny_segmentation_set(root: Path) -> Path:
    """A generic-layout 2D set: grey 32 x 32 images with a bright square, its mask (class 1); 10 + 3 cases."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count, prefix in (("Tr", 10, "case"), ("Ts", 3, "test")):
        (root / f"images{folder}").mkdir(parents=True)
        (root / f"labels{folder}").mkdir(parents=True)
        for index in range(count):
            top, left = rng.integers(2, 18, size=2)
            image = rng.integers(0, 60, (32, 32)).astype(np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            image[top : top + 12, left : left + 12] += 150
            mask[top : top + 12, left : left + 12] = 1
            Image.fromarray(image).save(root / f"images{folder}" / f"{prefix}{index}.png")
            Image.fromarray(mask).save(root / f"labels{folder}" / f"{prefix}{index}.png")
    return root


@pytest.fixture(scope="session")
def segmentation_set_writer():
    """:func:`write_tiny_segmentation_set`, for fixtures wider than one test."""
    return write_tiny_segmentation_set


@pytest.fixture
def tiny_segmentation_set(tmp_path: Path) -> Path:
    """See :func:`write_tiny_segmentation_set`."""
    return write_tiny_segmentation_set(tmp_path / "tiny-seg")


def tiny_study(storage: Path, mnist: Path, brain: Path, segmentation: Path, name: str = "study") -> dict:
    """Two tiny pretraining trials (4 epochs each), then a U-Net per selected checkpoint (3 epochs)."""
    return {
        "name": name,
        "storage_path": str(storage),
        "pretrain": {
            "classification": {"root": str(mnist), "num_workers": 0},
            "pretrain": {
                "model": "resnet10t",
                "epochs": 4,
                "image_size": 32,
                "batch_size": 16,
                "micro_batch_size": 8,
                "warmup_epochs": 1,
                "train_batches_per_epoch": 6,  # epochs of about a second: a signal can land mid-stage
                "val_batches": 1,
            },
            "score": {"targets": [{"name": "brain", "root": str(brain)}], "n_images": 8, "image_size": 32},
            "peak": {"smoothing": "none", "grace_period": 1, "patience": 10},
            "tune": {"grid": {"pretrain.recipe": ["simple", "advanced"]}, "checkpoint_num_to_keep": 2},
        },
        "select": {"per_trial": True, "baselines": ["final"]},
        "downstream": {
            "data": {
                "root": str(segmentation),
                "classes": ["background", "square"],
                "image_size": 32,
                "num_workers": 0,
            },
            "finetune": {"epochs": 3, "batch_size": 4, "device": "cpu"},
            "trials": {"kinds": ["peak", "final"], "modes": ["finetune"], "seeds": [0]},
            "tune": {"cpus_per_trial": 1},
        },
    }


@pytest.fixture(scope="session")
def tiny_study_factory():
    """:func:`tiny_study`, for tests and fixtures of any scope."""
    return tiny_study
