"""Checks on the experiment storage path."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from trainables.errors import ConfigError


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` if needed and prove that a file can be written there."""
    folder = Path(folder)
    probe = folder / f".medseg-write-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"storage_path {folder} is not writable ({exc.strerror}): choose a writable folder "
            "with --set storage_path=/path/to/results"
        ) from None
