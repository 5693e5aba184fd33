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
