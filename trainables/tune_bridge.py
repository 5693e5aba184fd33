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


def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    """One ``tune.report`` with the folder as the epoch's checkpoint (Ray copies it to storage)."""
    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def restore(read: Callable[[str], Any]) -> Any | None:
    """``read(folder)`` of the checkpoint Tune restores this trial from, or None on a fresh start."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return read(folder)


def trial_labels() -> dict[str, Any]:
    """The trial's id and name, and the resources Tune gave it (CPU, GPU, ...)."""
    context = tune.get_context()
    resources = context.get_trial_resources()
    return {
        "trial_id": context.get_trial_id(),
        "trial_name": context.get_trial_name(),
        "resources": dict(resources.required_resources) if resources else {},
    }


def trial_cpus() -> int | None:
    """The CPUs Tune gave this trial (torch uses as many threads)."""
    resources = tune.get_context().get_trial_resources()
    cpus = resources.required_resources.get("CPU") if resources else None
    return max(1, int(cpus)) if cpus else None


def trial_dir() -> Path:
    """The trial's local folder (Tune syncs what is written here to the storage path)."""
    return Path(tune.get_context().get_trial_dir())


def trial_storage_path() -> str:
    """The trial's folder on the experiment's storage (shared by every node of a cluster).

    Ray 2.60 has no public accessor; its session's storage context holds it.
    """
    from ray.train._internal.session import get_session

    session = get_session()
    storage = getattr(session, "storage", None) if session is not None else None
    return str(storage.trial_fs_path) if storage is not None else str(trial_dir())
