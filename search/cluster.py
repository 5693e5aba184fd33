"""Checks against the Ray cluster a search runs on, before any trial starts.

On one machine these pass at once. On a cluster they catch the two mistakes
that otherwise surface hours later as failed or forever-pending trials:

- a storage path or data root that some node cannot see (a folder that is not
  on the shared filesystem, a mount missing on one node): the driver writes a
  probe file into the experiment folder and a task pinned to every alive node
  reads it back and lists every data root;
- a trial that asks for more CPUs, GPUs or custom resources than any node has
  (Tune would leave it PENDING forever on a cluster without an autoscaler).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from trainables.errors import ConfigError, DataError

PROBE_PREFIX = ".medseg-node-probe-"


@dataclass(frozen=True)
class TrialRequest:
    """What one trial (or one worker of a data-parallel trial) needs of a single node."""

    stage: str
    resources: Mapping[str, float]

    def describe(self) -> str:
        return ", ".join(f"{amount:g} {name}" for name, amount in self.resources.items() if amount)


def _node_check(probe: str, token: str, roots: Sequence[str]) -> list[str]:
    """Runs on one node: what of the storage probe and data roots this node cannot read."""
    import os

    problems = []
    try:
        with open(probe) as stream:
            if stream.read() != token:
                problems.append(
                    f"storage probe {probe} holds other content (a different folder of the same name?)"
                )
    except OSError as exc:
        problems.append(f"cannot read the storage probe {probe} ({exc.strerror})")
    for root in roots:
        try:
            with os.scandir(root) as entries:
                next(entries, None)
        except OSError as exc:
            problems.append(f"cannot list data root {root} ({exc.strerror})")
    return problems


def alive_nodes() -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def probe_nodes(folder: Path, data_roots: Sequence[str], request: Mapping[str, float] | None = None) -> int:
    """Every alive node that can hold a trial (``request``; all nodes without one) reads a file the
    driver wrote into ``folder`` and lists every data root.

    Returns the number of nodes probed; raises DataError naming each node and what it cannot see.
    A head node that runs no trials (``--num-cpus=0``) is not asked for the data.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = folder / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    check = ray.remote(num_cpus=0)(_node_check)
    try:
        nodes = [node for node in alive_nodes() if request is None or _fits(_node_resources(node), request)]
        pending = {
            check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(str(probe), token, list(data_roots)): node
            for node in nodes
        }
        failures = []
        for reference, node in pending.items():
            problems = ray.get(reference, timeout=120)
            if problems:
                failures.append(
                    f"node {node['NodeManagerAddress']} ({node['NodeID'][:8]}): {'; '.join(problems)}"
                )
    finally:
        probe.unlink(missing_ok=True)
    if failures:
        raise DataError(
            f"{len(failures)} of {len(nodes)} Ray node(s) cannot see what every trial needs: "
            + " | ".join(failures)
            + ". storage_path and the data roots must be mounted at the same path on every node "
            "(NFS, Lustre, GPFS, ...), or copied there"
        )
    return len(nodes)


def _node_resources(node: Mapping[str, Any]) -> dict[str, float]:
    return {name: float(amount) for name, amount in node.get("Resources", {}).items()}


def _fits(node: Mapping[str, float], request: Mapping[str, float]) -> bool:
    return all(node.get(name, 0.0) >= amount for name, amount in request.items() if amount)


def check_requests(requests: Sequence[TrialRequest], autoscaler: bool = False) -> None:
    """Refuse a trial no alive node can hold (unless an autoscaler may add a node that can)."""
    if autoscaler:
        return
    nodes = [_node_resources(node) for node in alive_nodes()]
    for request in requests:
        wanted = {name: amount for name, amount in request.resources.items() if amount}
        if any(_fits(node, wanted) for node in nodes):
            continue
        largest = ", ".join(
            "{" + ", ".join(f"{name}: {node.get(name, 0):g}" for name in wanted) + "}" for node in nodes
        )
        raise ConfigError(
            f"a {request.stage} trial asks one node for {request.describe()}, but no node of this cluster "
            f"has that much (per node: {largest}); lower the stage's tune.cpus_per_trial / gpus_per_trial / "
            "custom_resources, add a bigger node, or set autoscaler: true if one can be added"
        )


def check_cluster(stage: str, folder: Path, data_roots: Sequence[str], settings: Any) -> None:
    """Probe storage and data on every node, and check that one trial fits a node.

    ``settings`` is a stage's ``tune`` section; a data-parallel trial's workers
    are placed one by one, so it is one worker (``cpus_per_trial`` and
    ``gpus_per_trial`` are per worker) that must fit a node.
    """
    request = {"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial, **settings.custom_resources}
    check_requests([TrialRequest(stage, request)], settings.autoscaler)
    if len(alive_nodes()) > 1:  # one node: the driver's own checks already covered it
        probe_nodes(folder, data_roots, request)
