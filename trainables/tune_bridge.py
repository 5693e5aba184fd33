"""The checkpoint bridge between Ray Tune and the Ray-free trial loops.

Trainables call these instead of Ray directly: reporting a metrics dict with
a checkpoint folder, restoring the last checkpoint, and the trial's labels,
CPU count and folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune


def report(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
    """One ``tune.report`` with the folder as the epoch's checkpoint (Ray copies it to storage)."""
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))


def restore(read: Callable[[str], Any]) -> Any | None:
    """``read(folder)`` of the checkpoint Tune restores this trial from, or None on a fresh start."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return read(folder)


def trial_labels() -> dict[str, str]:
    context = tune.get_context()
    return {"trial_id": context.get_trial_id(), "trial_name": context.get_trial_name()}


def trial_cpus() -> int | None:
    """The CPUs Tune gave this trial (torch uses as many threads)."""
    resources = tune.get_context().get_trial_resources()
    cpus = resources.required_resources.get("CPU") if resources else None
    return max(1, int(cpus)) if cpus else None


def trial_dir() -> Path:
    return Path(tune.get_context().get_trial_dir())
