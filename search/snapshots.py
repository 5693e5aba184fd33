"""Guarding Ray Tune's experiment snapshots against a driver killed while writing one.

Ray 2.60 writes a snapshot into a staging folder and then copies it into the
experiment folder file by file (``pyarrow.fs.copy_files``, in a background
thread), so a SIGKILL during the copy leaves a truncated file there: the
experiment state (JSON), the searcher's state (a pickle, ``basic-variant-state``
for grid and random searches, ``searcher-state``/``search_gen_state`` for
Optuna) or the callbacks' state. ``Tuner.restore`` then either fails, or, for a
truncated searcher state, logs an error and silently starts every trial afresh.

:class:`SnapshotBackup` keeps a copy of each of these files whenever the
newest one reads back whole (Tune asks callbacks for their state at every
snapshot), and :func:`repair_experiment_state` puts the last good copy back in
place of a damaged file before a restore, or refuses to restore when there is
none. Local storage paths only.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import IO, Any

from ray import tune

from trainables.errors import MedsegError
from trainables.records import atomic_write

STATE_PATTERN = "experiment_state-*.json"
# Every file Tune reads on restore, newest by name as Tune picks them (the searcher
# and callback states are cloudpickles whatever their suffix).
SNAPSHOT_PATTERNS = (
    STATE_PATTERN,
    "basic-variant-state-*.json",
    "search_gen_state-*.json",
    "searcher-state-*.pkl",
    "callback-states-*.pkl",
)


class DamagedSnapshotError(MedsegError):
    """A snapshot file Tune needs to resume is damaged and no good copy of it was kept."""


def _newest(experiment_dir: Path, pattern: str) -> Path | None:
    found = sorted(experiment_dir.glob(pattern))
    return found[-1] if found else None


def _backup_of(snapshot_file: Path) -> Path:
    return snapshot_file.with_name(f".{snapshot_file.name}.last-good")  # invisible to Tune's patterns


def _reads_back(path: Path, pattern: str) -> bool:
    """Whether ``path`` holds a whole snapshot of ``pattern``'s kind: JSON for the experiment state,
    else a cloudpickle."""
    try:
        if pattern == STATE_PATTERN:
            json.loads(path.read_text())
        else:
            from ray import cloudpickle

            with path.open("rb") as stream:
                cloudpickle.load(stream)
    except Exception:  # noqa: BLE001 - any failure to read back means damaged
        return False
    return True


def _write(data: bytes, stream: IO[bytes]) -> None:
    stream.write(data)


class SnapshotBackup(tune.Callback):
    """Keeps a copy of the newest whole snapshot files of a local experiment folder."""

    def __init__(self, experiment_dir: str | Path) -> None:
        self.experiment_dir = str(experiment_dir)

    def get_state(self) -> dict[str, Any] | None:
        for pattern in SNAPSHOT_PATTERNS:
            newest = _newest(Path(self.experiment_dir), pattern)
            if newest is not None and _reads_back(newest, pattern):
                atomic_write(_backup_of(newest), functools.partial(_write, newest.read_bytes()))
        return None  # nothing of its own to save


def repair_experiment_state(experiment_dir: str | Path) -> list[str]:
    """Put the last good copy in place of every damaged newest snapshot file; the names repaired.

    Raises :class:`DamagedSnapshotError` when a damaged file has no good copy:
    restoring would silently rerun every trial.
    """
    folder = Path(experiment_dir)
    repaired = []
    for pattern in SNAPSHOT_PATTERNS:
        newest = _newest(folder, pattern)
        if newest is None or _reads_back(newest, pattern):
            continue
        backup = _backup_of(newest)
        if not (backup.exists() and _reads_back(backup, pattern)):
            raise DamagedSnapshotError(
                f"{newest} is damaged (the driver was killed while Ray wrote it) and no good copy was "
                "kept, so the experiment cannot be resumed; rerun with --new (or another --name) to "
                "start a fresh one beside it"
            )
        shutil.copyfile(backup, newest)
        repaired.append(newest.name)
    return repaired
