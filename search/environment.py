"""What an experiment ran on: package versions, the project's git commit, CUDA and GPUs, data fingerprints."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGES = (
    "medseg-search",
    "torch",
    "torchvision",
    "timm",
    "segmentation-models-pytorch",
    "ray",
    "mlflow",
    "optuna",
    "albumentations",
    "monai",
    "nibabel",
    "numpy",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str | None:
    """The commit of the project's checkout, if it is one (None for an installed copy)."""
    source = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def accelerators() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": None, "gpus": []}
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cuda": torch.version.cuda, "gpus": names}


def fingerprint(root: str | os.PathLike[str]) -> dict[str, Any]:
    """File count, total bytes and a hash of the sorted (relative path, size) list of a data folder."""
    root = Path(root)
    digest = hashlib.sha256()
    count = total = 0
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = Path(folder) / name
            size = path.stat().st_size
            digest.update(f"{path.relative_to(root)}\0{size}\n".encode())
            count, total = count + 1, total + size
    return {"root": str(root), "files": count, "bytes": total, "sha256": digest.hexdigest()}


def record(data_roots: Iterable[str]) -> dict[str, Any]:
    """Everything above, for the data folders ``data_roots``."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
        **accelerators(),
        "datasets": [fingerprint(root) for root in dict.fromkeys(data_roots) if Path(root).exists()],
    }
