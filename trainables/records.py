"""Checkpoint records: the small JSON beside each checkpoint (no torch, so light workers stay light).

``record.json`` holds a checkpoint's epoch, the trial's labels (id, name,
encoder, recipe), the peak rule and the metric it watches, and the metric
history up to that epoch. Selection and reports read it instead of the
(large) state file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from trainables.errors import CheckpointError

RECORD_FILE = "record.json"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Run ``write`` on a temporary file beside ``path``, then rename it into place.

    Readers see the old file or the complete new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_record(directory: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write a checkpoint folder's ``record.json``, atomically."""
    return atomic_write(
        Path(directory) / RECORD_FILE, lambda stream: stream.write(json.dumps(record).encode())
    )


def read_record(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``record.json`` of a checkpoint folder."""
    path = Path(directory) / RECORD_FILE
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint record {path} cannot be read ({exc})") from None
    return record
