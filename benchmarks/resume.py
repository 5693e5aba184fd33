"""Benchmark 4: what a SIGKILL of the driver costs: seconds until training continues, epochs redone.

A one-trial pretraining search (the demo's config, simple recipe, short
epochs, ``tune.cpus_per_trial = threads``) runs as the user runs it,
``python -m search pretrain --config <file>``, in its own process group. Once
the trial has reported epoch ``KILL_AT_EPOCH`` (plus a delay: 0 s, the worst
case for redone work, or half an epoch, a crash mid-epoch) the driver gets
SIGKILL and, 2 s later, what is left of its process group too (Ray's helper
processes; as ``tests/test_restore.py`` does). Then the same command is run
again and the trial's ``result.json`` is watched:

- **to first report**: seconds from the rerun's start until the trial reports
  again (Ray start, ``Tuner.restore``, the trial's restore and its first
  epoch);
- **epochs redone**: epochs reported before the kill that are reported again
  (Tune restores from the last experiment snapshot, taken every 2 s);
- **to new ground**: seconds until an epoch beyond the last one reported
  before the kill is reported.

For scale: the fresh start's seconds to its first report, and the epoch
time. One fresh start is killed, its rerun is killed again once it has
reported new ground, and so on (``repeats`` kills).

Run alone: ``python -m benchmarks.resume [--full]``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    REPO,
    Options,
    Stats,
    demo_data,
    markdown_table,
    run_benchmark,
    subprocess_env,
)

KILL_AT_EPOCH = 2
EPOCHS = 6
TIMEOUT_S = 300.0


def write_config(options: Options, name: str, folder: Path) -> Path:
    """The demo's config as one trial with short epochs, in ``folder``."""
    data = demo_data(options)
    config = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    config.update(name=name, storage_path=str(folder))
    config["classification"]["root"] = str(data["mnist"])
    config["score"]["targets"][0]["root"] = str(data["brain"])
    config["pretrain"].update(epochs=EPOCHS, train_batches_per_epoch=8, val_batches=2)
    config["score"]["n_images"] = 64
    config["peak"].update(grace_period=EPOCHS, patience=EPOCHS)  # no early stop
    config["tune"] = {"cpus_per_trial": options.threads, "checkpoint_num_to_keep": 2}
    path = folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def reported_epochs(experiment: Path) -> list[int]:
    """The epochs in the trial's result.json, in order (repeats after a restore included)."""
    files = list(experiment.glob("*/result.json"))
    if not files:
        return []
    epochs = []
    for line in files[0].read_text().splitlines():
        try:
            epochs.append(int(json.loads(line)["epoch"]))
        except (ValueError, KeyError):
            continue  # a line being written
    return epochs


class Driver:
    """``python -m search pretrain`` in its own process group."""

    def __init__(self, config: Path, log: Path) -> None:
        self.started = time.perf_counter()
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "search", "pretrain", "--config", str(config)],
            cwd=REPO,
            env=subprocess_env(),
            start_new_session=True,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_for(self, experiment: Path, done: Any) -> tuple[float, list[int]]:
        """Poll result.json until ``done(epochs)``; seconds since start and the epochs."""
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            epochs = reported_epochs(experiment) if experiment.exists() else []
            if done(epochs):
                return time.perf_counter() - self.started, epochs
            if self.process.poll() is not None:
                raise RuntimeError(f"the search ended (exit {self.process.returncode}); see {self.log.name}")
            time.sleep(0.05)
        raise TimeoutError(f"no progress in {TIMEOUT_S:.0f} s; see {self.log.name}")

    def kill(self) -> None:
        """SIGKILL the driver, then (2 s later) whatever is left of its process group."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        time.sleep(2)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()


def kill_and_rerun(
    driver: Driver, config: Path, experiment: Path, log: Path, delay_s: float
) -> tuple[Driver, dict[str, Any]]:
    """Wait ``delay_s``, SIGKILL ``driver``, rerun the same command; the rerun's measurements."""
    time.sleep(delay_s)
    before = reported_epochs(experiment)
    driver.kill()
    last_before = max(before)
    rerun = Driver(config, log)
    to_report, after = rerun.wait_for(experiment, lambda e: len(e) > len(before))
    to_new_ground, _ = rerun.wait_for(experiment, lambda e: max(e, default=0) > last_before)
    first_again = after[len(before)]
    return rerun, {
        "epochs_before_kill": last_before,
        "first_epoch_after_restart": first_again,
        "epochs_redone": max(0, last_before - first_again + 1),
        "restart_to_first_report_s": to_report,
        "restart_to_new_ground_s": to_new_ground,
    }


def run(options: Options) -> dict[str, Any]:
    """One fresh start, then ``repeats`` kills, each followed by a rerun (the next kill hits the rerun
    once it has reported new ground; kill delays alternate between 0 and half an epoch)."""
    repeats = options.repeats_or(quick=2, full=4)
    folder = options.work_dir / "resume"
    name = "resume"
    experiment = folder / name
    shutil.rmtree(experiment, ignore_errors=True)
    config = write_config(options, name, folder)
    print("resume: fresh start ...", flush=True)
    driver = Driver(config, folder / f"{name}-0.log")
    cycles = []
    try:
        to_first_report, _ = driver.wait_for(experiment, lambda e: len(e) >= 1)
        at_kill_epoch, _ = driver.wait_for(experiment, lambda e: len(e) >= KILL_AT_EPOCH)
        epoch_s = (at_kill_epoch - to_first_report) / (KILL_AT_EPOCH - 1)
        for index in range(repeats):
            delay = 0.0 if index % 2 == 0 else 0.5
            print(f"resume: kill {index + 1}/{repeats} ({delay:g} epoch after a report) ...", flush=True)
            log = folder / f"{name}-{index + 1}.log"
            driver, cycle = kill_and_rerun(driver, config, experiment, log, delay * epoch_s)
            cycle["kill_delay_epochs"] = delay
            cycle["resumed"] = "resuming experiment" in log.read_text()
            cycles.append(cycle)
    finally:
        driver.kill()
    keys = ("restart_to_first_report_s", "restart_to_new_ground_s", "epochs_redone")
    return {
        "repeats": repeats,
        "configuration": f"configs/demo.yaml, simple recipe, one trial, {EPOCHS} epochs of 8 micro-batches, "
        f"2 validation batches, score N=64; first kill after epoch {KILL_AT_EPOCH}",
        "fresh_start_to_first_report_s": to_first_report,
        "epoch_s": epoch_s,
        "cycles": cycles,
        "summary": {key: Stats.of([c[key] for c in cycles]).as_dict() for key in keys},
    }


def tables(result: dict[str, Any]) -> str:
    rows = [
        [
            f"{c['kill_delay_epochs']:g} epoch after epoch {c['epochs_before_kill']}",
            "yes" if c["resumed"] else "NO",
            f"{c['restart_to_first_report_s']:.1f}",
            c["first_epoch_after_restart"],
            c["epochs_redone"],
            f"{c['restart_to_new_ground_s']:.1f}",
        ]
        for c in result["cycles"]
    ]
    s = {key: Stats(**value) for key, value in result["summary"].items()}
    rows.append(
        [
            "**median (min–max)**",
            "",
            s["restart_to_first_report_s"].show(1),
            "",
            s["epochs_redone"].show(0),
            s["restart_to_new_ground_s"].show(1),
        ]
    )
    table = markdown_table(
        [
            "SIGKILL of the driver",
            "resumed",
            "rerun to first report s",
            "first epoch reported",
            "epochs redone",
            "rerun to a new epoch s",
        ],
        rows,
    )
    note = (
        f"\nFor scale: a fresh start took {result['fresh_start_to_first_report_s']:.1f} s to its first "
        f"report; an epoch takes {result['epoch_s']:.1f} s. {result['configuration']}."
    )
    return table + "\n" + note


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_benchmark(
        "resume", __doc__ or "", run, tables, lambda o: f"Resume after SIGKILL ({o.grid} grid)", argv
    )


if __name__ == "__main__":
    main()
