"""Starting and ending the Ray session the driver uses."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from trainables.errors import MedsegError


def use_cluster_token() -> bool:
    """Send the cluster's auth token when this machine has one; True if token mode is on.

    ``ray start --head`` in Ray 2.60 turns on token authentication when
    ``~/.ray/auth_token`` exists (every ``ray.init()`` writes one), but
    ``ray.init(address=...)`` with an explicit address only sends the token
    under ``RAY_AUTH_MODE=token``. Token mode also connects to clusters without
    authentication, so it is switched on whenever a token is at hand (Ray's own
    helper: it honours an explicit ``RAY_AUTH_MODE`` and refreshes Ray's config).
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray version: the user sets RAY_AUTH_MODE
        return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    return bool(maybe_enable_token_auth_if_token_available(warn_if_disabled=False))


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
    if address:
        use_cluster_token()
    local: dict[str, Any] = {"num_cpus": num_cpus} if not address else {}
    try:
        ray.init(address=address or "local", logging_level=logging.WARNING, **local)
    except ConnectionError as exc:
        raise MedsegError(
            f"cannot connect to the Ray cluster at {address} ({exc}): check the address, that the "
            "cluster runs, and, if it uses token authentication, that this machine has its token "
            "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()
