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
