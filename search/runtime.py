"""Starting and ending the Ray session the driver uses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Use the running Ray session, or start one for the duration of the block.

    Without an address a new local Ray is started (``address="local"``): a bare
    ``ray.init()`` would silently join a cluster that happens to run on this
    machine. A session started here is shut down on exit, also on errors.
    """
    if ray.is_initialized():
        yield
        return
    local: dict[str, Any] = {"num_cpus": num_cpus} if not address else {}
    ray.init(address=address or "local", logging_level=logging.WARNING, **local)
    try:
        yield
    finally:
        ray.shutdown()
