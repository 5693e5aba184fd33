"""Real multi-node Ray clusters on one machine: a head and workers started with ``ray start``.

Each node runs in its own process group, so killing one is a node dying. The
drivers connect with ``--address`` like a user on a cluster (Ray 2.60 token
authentication included: these machines have ``~/.ray/auth_token``, and the
driver switches token mode on by itself). The test session's own local Ray
keeps running beside these clusters on other ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalCluster:
    """A head node and worker nodes, each its own ``ray start --block`` process group."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="/tmp/mrc")  # short: Ray's socket paths have a length limit
        self.port = _free_port()
        self.nodes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",  # ray start --address needs it when the head has a token
            "RAY_health_check_period_ms": "500",  # notice a dead node in seconds, not half a minute
            "RAY_health_check_failure_threshold": "4",
        }
        ports = [f"--port={self.port}", f"--dashboard-port={_free_port()}"]
        ports.append(f"--ray-client-server-port={_free_port()}")
        self._start("head", "--head", "--num-cpus=1", f"--temp-dir={self.temp}", *ports)
        self._wait_for_nodes(1)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, name: str, *arguments: str) -> None:
        log = open(Path(self.temp) / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        self.nodes[name] = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *arguments],
            cwd=self.temp,
            env=self.env,
            start_new_session=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def add_worker(self, name: str, cpus: int, resources: dict[str, float]) -> None:
        self._start(
            name, f"--address={self.address}", f"--num-cpus={cpus}", f"--resources={json.dumps(resources)}"
        )
        self._wait_for_nodes(len(self.nodes))

    def _wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True, text=True
            )
            if done.returncode == 0 and done.stdout.count("node_") >= count:
                return
            for name, node in self.nodes.items():
                assert node.poll() is None, (
                    f"node {name} died: {(Path(self.temp) / f'{name}.log').read_text()}"
                )
            time.sleep(1)
        pytest.fail(f"the cluster did not reach {count} node(s)")

    def session_pids(self, name: str) -> set[int]:
        """The processes of node ``name`` (its ``ray start`` session)."""
        return _session_pids(self.nodes[name].pid)

    def kill(self, name: str) -> None:
        """The node dies: its raylet, object store and every worker process on it, at once.

        Ray puts each worker process in a process group of its own, so killing the
        node's process group would leave its trial actors running (they keep
        reporting to the driver without their raylet); every process of the node's
        session (``ray start`` was started with ``start_new_session``) is killed.
        """
        _kill_session(self.nodes[name].pid)
        self.nodes[name].wait()

    def shutdown(self) -> None:
        for name in reversed(list(self.nodes)):
            _kill_session(self.nodes[name].pid)
        time.sleep(1)
        for line in subprocess.run(
            ["ps", "-eo", "pid,args"], capture_output=True, text=True
        ).stdout.splitlines():
            if self.temp in line:  # Ray processes that left the node's process group
                try:
                    os.kill(int(line.split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _session_pids(session_id: int) -> set[int]:
    table = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    rows = (tuple(int(field) for field in line.split()) for line in table.splitlines())
    return {pid for pid, sid in rows if sid == session_id}


def _alive(pid: int) -> bool:
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return bool(state.strip()) and not state.strip().startswith("Z")


def _kill_session(session_id: int) -> None:
    """SIGKILL every process of the session ``session_id`` (a node's ``ray start`` and all it started)."""
    for pid in _session_pids(session_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def cluster():
    started = LocalCluster()
    yield started
    started.shutdown()


def _driver(command: list[str], address: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # the driver finds the token itself
    return subprocess.Popen(
        [sys.executable, "-m", "search", *command, "--address", address],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_pipeline_on_a_two_node_cluster_runs_its_trials_on_the_pinned_worker(
    cluster: LocalCluster, tmp_path: Path, demo_data, segmentation_set_writer, tiny_study_factory
) -> None:
    cluster.add_worker("worker", cpus=2, resources={"medseg_worker": 2})
    study = tiny_study_factory(
        tmp_path / "shared", demo_data["mnist"], demo_data["brain"], segmentation_set_writer(tmp_path / "seg")
    )
    for stage in ("pretrain", "downstream"):  # only the worker has this resource: the head cannot host trials
        study[stage]["tune"]["custom_resources"] = {"medseg_worker": 1}
    study["pretrain"]["pretrain"]["epochs"] = 2
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))

    driver = _driver(["pipeline", "--config", str(config)], cluster.address)
    output, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, output
    folder = tmp_path / "shared" / "study"
    assert "pipeline done" in output
    checkpoints = list((folder / "pretrain").glob("*/checkpoint_*/state.pt"))
    assert len({c.parent.parent for c in checkpoints}) == 2  # both trials' checkpoints in the storage path
    assert len(list((folder / "downstream").glob("*/test_metrics.json"))) == len(
        json.loads((folder / "selection.json").read_text())["selected"]
    )


def test_a_pipeline_refuses_trials_no_node_can_hold(
    cluster: LocalCluster, tmp_path: Path, demo_data, segmentation_set_writer, tiny_study_factory
) -> None:
    study = tiny_study_factory(
        tmp_path / "shared", demo_data["mnist"], demo_data["brain"], segmentation_set_writer(tmp_path / "seg")
    )
    study["pretrain"]["tune"]["gpus_per_trial"] = 1
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    driver = _driver(["pipeline", "--config", str(config)], cluster.address)
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 2
    assert "asks one node for 1 CPU, 1 GPU, but no node of this cluster has that much" in output


def _rows(experiment: Path) -> dict[str, list[int]]:
    return {
        p.parent.name: [json.loads(line)["epoch"] for line in p.read_text().splitlines()]
        for p in experiment.glob("*/result.json")
    }


def test_a_trial_whose_node_dies_resumes_on_another_from_its_last_checkpoint(
    cluster: LocalCluster, tmp_path: Path, make_config
) -> None:
    for name in ("worker-a", "worker-b"):
        cluster.add_worker(name, cpus=1, resources={"medseg_worker": 1})
    epochs = 5
    config = make_config(
        "node-death",
        storage_path=str(tmp_path / "shared"),
        pretrain__epochs=epochs,
        pretrain__train_batches_per_epoch=30,  # epochs of seconds: the kill lands mid-trial, not after it
        tune={
            "grid": {"pretrain.recipe": ["simple", "advanced"]},
            "scheduler": "fifo",
            "custom_resources": {"medseg_worker": 1},
            "max_failures": 3,
        },
    )
    experiment = tmp_path / "shared" / "node-death"
    driver = _driver(["pretrain", "--config", str(config)], cluster.address)
    deadline = time.monotonic() + 600
    while not (len(rows := _rows(experiment)) == 2 and min(map(len, rows.values())) >= 2):
        assert driver.poll() is None, driver.communicate()[0]
        assert time.monotonic() < deadline, "the trials did not reach epoch 2 in time"
        time.sleep(0.2)
    # one trial runs on each worker: the one on worker-a loses its node
    last_rows = {
        p.parent.name: json.loads(p.read_text().splitlines()[-1]) for p in experiment.glob("*/result.json")
    }
    node_a = cluster.session_pids("worker-a")
    on_a = {name: row["pid"] for name, row in last_rows.items() if row["pid"] in node_a}
    assert len(on_a) == 1, (last_rows, node_a, cluster.session_pids("worker-b"))
    ((victim, victim_pid),) = on_a.items()
    assert last_rows[victim]["epoch"] < epochs, "the trial finished before its node could be killed"
    cluster.kill("worker-a")
    assert not _alive(victim_pid), "the trial on the killed node is still running"

    output, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, output
    rows = _rows(experiment)
    assert len(rows) == 2
    for trial, reported in rows.items():
        assert sorted(set(reported)) == list(range(1, epochs + 1)), (trial, reported)
        assert len(reported) - epochs <= 1, (trial, reported)  # at most one epoch redone
    # the dead node's trial went on in a new process, restored from its last checkpoint
    history = [json.loads(line) for line in (experiment / victim / "result.json").read_text().splitlines()]
    before = [row["epoch"] for row in history if row["pid"] == victim_pid]
    after = [row for row in history if row["pid"] != victim_pid]
    assert after and after[0]["iterations_since_restore"] == 1, (before, after, output)
    assert after[0]["epoch"] in (before[-1], before[-1] + 1), (before, after[0]["epoch"])
    from ray import tune

    trials = tune.ExperimentAnalysis(str(experiment)).trials
    assert {t.status for t in trials} == {"TERMINATED"}
