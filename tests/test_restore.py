"""Kill the driver with SIGKILL mid-search, rerun the same command: same stops, same peak checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from search.cli import main
from search.selection import trial_outcomes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _epochs_reported(experiment: Path) -> list[int]:
    return [len(p.read_text().splitlines()) for p in experiment.glob("*/result.json")]


def _kill_mid_search(config: Path, experiment: Path) -> None:
    """Start the search in a driver process and SIGKILL it once every trial has reported 2 epochs."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "search", "pretrain", "--config", str(config)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            reported = _epochs_reported(experiment) if experiment.exists() else []
            if len(reported) == 2 and min(reported) >= 2:
                break
            assert driver.poll() is None, "the search ended before it could be killed"
            time.sleep(0.1)
        else:
            pytest.fail("the search did not reach epoch 2 in time")
        driver.send_signal(signal.SIGKILL)  # the crash: only the driver dies
        driver.wait()
        assert max(_epochs_reported(experiment)) < 12
    finally:
        time.sleep(2)
        try:  # then clean up the Ray processes the dead driver left behind
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _peaks(experiment: Path) -> dict[str, tuple[int, str, int | None, dict[str, torch.Tensor]]]:
    peaks = {}
    for outcome in trial_outcomes(experiment):
        assert outcome.peak_epoch is not None
        state = torch.load(outcome.checkpoints[outcome.peak_epoch] / "state.pt", weights_only=True)
        peaks[outcome.recipe] = (
            outcome.epochs_trained,
            outcome.stop_reason,
            outcome.peak_epoch,
            state["model"],
        )
    return peaks


def test_killed_and_restored_search_stops_like_an_uninterrupted_one(
    tmp_path, make_config, ray_session, capsys
) -> None:
    config = make_config(
        "restore",
        pretrain__epochs=12,
        peak={"smoothing": "none", "grace_period": 1, "patience": 3},
        tune={"grid": {"pretrain.recipe": ["simple", "advanced"]}, "checkpoint_num_to_keep": 2},
    )
    assert main(["pretrain", "--config", str(config), "--name", "uninterrupted"]) == 0
    expected = _peaks(tmp_path / "results" / "uninterrupted")

    experiment = tmp_path / "results" / "restore"
    _kill_mid_search(config, experiment)
    capsys.readouterr()
    assert main(["pretrain", "--config", str(config)]) == 0
    assert "resuming experiment" in capsys.readouterr().out

    restored = _peaks(experiment)
    assert set(restored) == set(expected) == {"simple", "advanced"}
    assert len(list(experiment.glob("*/result.json"))) == 2  # no trial was added or started afresh
    for recipe, (epochs, reason, peak, weights) in expected.items():
        assert restored[recipe][:3] == (epochs, reason, peak), recipe
        assert all(torch.equal(weights[key], restored[recipe][3][key]) for key in weights), recipe
    assert any(reason == "peaked" for _, reason, _, _ in expected.values())  # the scheduler did stop trials
