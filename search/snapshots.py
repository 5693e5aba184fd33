"""Guarding Ray Tune's experiment snapshots against a driver killed while writing one.

Ray 2.60 writes ``experiment_state-<session>.json`` in place (``open`` +
``json.dump``), so a SIGKILL during a snapshot leaves a truncated file and
``Tuner.restore`` fails. :class:`SnapshotBackup` copies each snapshot once it
is complete (Tune asks callbacks for their state right after writing it), and
:func:`repair_experiment_state` puts the last good copy back before a restore.
Local storage paths only; remote storage is written by Ray's syncer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ray import tune

from trainables.records import atomic_write

STATE_PATTERN = "experiment_state-*.json"


def _newest_state(experiment_dir: Path) -> Path | None:
    found = sorted(experiment_dir.glob(STATE_PATTERN))
    return found[-1] if found else None


def _backup_of(state_file: Path) -> Path:
    return state_file.with_name(f".{state_file.name}.last-good")  # invisible to Tune's file pattern


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


class SnapshotBackup(tune.Callback):
    """Keeps a copy of the newest complete experiment snapshot of a local experiment folder."""

    def __init__(self, experiment_dir: str | Path) -> None:
        self.experiment_dir = str(experiment_dir)

    def get_state(self) -> dict[str, Any] | None:
        newest = _newest_state(Path(self.experiment_dir))
        if newest is not None and _parses(newest):
            atomic_write(_backup_of(newest), lambda stream: stream.write(newest.read_bytes()))
        return None  # nothing of its own to save


def repair_experiment_state(experiment_dir: str | Path) -> bool:
    """Replace a truncated newest snapshot by its last good copy; True if it did."""
    newest = _newest_state(Path(experiment_dir))
    if newest is None or _parses(newest):
        return False
    backup = _backup_of(newest)
    if not backup.exists():
        return False
    shutil.copyfile(backup, newest)
    return True
