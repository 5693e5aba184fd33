"""PeakStoppingScheduler: scripted results through on_trial_result, state round trips, real Tune runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune
from ray.tune.schedulers import TrialScheduler

from search.scheduler import PeakStoppingScheduler, SchedulerStateCallback
from search.selection import select, trial_outcomes
from trainables.peak import PeakRule, first_stop
from trainables.replay import replay_trainable

RULE = PeakRule(smoothing="none", grace_period=0, patience=2)

# Curves with known peaks: (values for epochs 1..8, expected stop epoch, expected peak epoch)
CURVES = [
    ([0.50, 0.45, 0.40, 0.42, 0.44, 0.46, 0.48, 0.50], 5, 3),  # valley at 3
    ([0.50, 0.40, 0.45, 0.47, 0.30, 0.29, 0.28, 0.27], 4, 2),  # second, deeper valley comes too late
    ([0.50, 0.49, 0.48, 0.47, 0.46, 0.45, 0.44, 0.43], 8, 8),  # always improving: the budget ends it
    ([0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65], 3, 1),  # best at the first epoch
]


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)


def _feed(scheduler: PeakStoppingScheduler, trial_id: str, values: list[float], start: int = 1) -> int | None:
    """Report values epoch by epoch; the epoch at which the scheduler says STOP, if it does."""
    for epoch, value in enumerate(values, start=start):
        decision = scheduler.on_trial_result(None, _trial(trial_id), {"epoch": epoch, "robustness": value})
        if decision == TrialScheduler.STOP:
            return epoch
    return None


@pytest.mark.parametrize(("values", "stop", "peak"), CURVES)
def test_scripted_results_stop_where_the_rule_says(values, stop, peak) -> None:
    rule = PeakRule(smoothing="none", grace_period=0, patience=2, max_epochs=8)
    scheduler = PeakStoppingScheduler("robustness", "min", rule=rule)
    assert _feed(scheduler, "t", values) == stop
    state = first_stop(list(enumerate(values, start=1)), rule)
    assert (state.epoch, state.peak_epoch) == (stop, peak)
    assert f"at epoch {peak}" in scheduler.debug_string()


def test_results_without_the_metric_or_epoch_continue() -> None:
    scheduler = PeakStoppingScheduler("robustness", "min", rule=RULE)
    for result in ({"epoch": 1}, {"robustness": 0.3}, {}):
        assert scheduler.on_trial_result(None, _trial("t"), result) == TrialScheduler.CONTINUE


def test_metric_and_mode_can_come_from_tune_config() -> None:
    scheduler = PeakStoppingScheduler(rule=RULE)
    with pytest.raises(ValueError, match="needs a metric and a mode"):
        scheduler.on_trial_add(None, _trial("t"))
    assert scheduler.set_search_properties("robustness", "min")
    scheduler.on_trial_add(None, _trial("t"))
    assert scheduler.metric == "robustness"


def test_own_metric_stays_and_a_conflicting_mode_is_refused() -> None:
    scheduler = PeakStoppingScheduler("robustness", "min", rule=RULE)
    assert scheduler.set_search_properties("robustness_best", "min")
    assert scheduler.metric == "robustness"
    assert not scheduler.set_search_properties(None, "max")


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"mode": "up"}, "'up'"), ({"rule": {"patience": 3}}, "PeakRule")]
)
def test_constructor_rejects_bad_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        PeakStoppingScheduler("robustness", **kwargs)


def test_state_survives_a_json_round_trip_and_decides_the_same() -> None:
    values = CURVES[0][0]
    uninterrupted = PeakStoppingScheduler("robustness", "min", rule=RULE)
    expected = _feed(uninterrupted, "t", values)
    before = PeakStoppingScheduler("robustness", "min", rule=RULE)
    assert _feed(before, "t", values[:3]) is None
    saved = json.loads(json.dumps(SchedulerStateCallback(before).get_state()))
    after = PeakStoppingScheduler("robustness", "min", rule=RULE)  # as rebuilt by Tuner.restore
    SchedulerStateCallback(after).set_state(saved)
    assert _feed(after, "t", values[3:], start=4) == expected


def test_replayed_epochs_replace_the_recorded_ones() -> None:
    scheduler = PeakStoppingScheduler(
        "robustness", "min", rule=PeakRule(smoothing="none", grace_period=0, patience=3)
    )
    _feed(scheduler, "t", [0.5, 0.4, 0.45, 0.47])
    # the trial restarts from its epoch-2 checkpoint and reports epoch 3 again, better this time
    state = scheduler.record("t", 3, 0.3)
    assert (state.epoch, state.peak_epoch, state.epochs_since_improvement) == (3, 3, 0)
    assert scheduler.get_state()["histories"]["t"] == {"1": 0.5, "2": 0.4, "3": 0.3}


def test_state_is_dropped_when_a_trial_ends() -> None:
    scheduler = PeakStoppingScheduler("robustness", "min", rule=RULE)
    _feed(scheduler, "a", [0.5])
    _feed(scheduler, "b", [0.5])
    scheduler.on_trial_complete(None, _trial("a"), {})
    scheduler.on_trial_remove(None, _trial("b"))
    assert scheduler.get_state() == {"histories": {}}


def _replay_space(rule: PeakRule, index) -> dict:
    curves = [
        {"epochs": list(range(1, 9)), "values": values, "labels": {"encoder": f"curve{i}", "recipe": "known"}}
        for i, (values, _, _) in enumerate(CURVES)
    ]
    return {"curves": curves, "curve_index": index, "metric": "robustness", "peak": vars(rule).copy()}


def _tuner(tmp_path: Path, name: str, rule: PeakRule, index, **tune_config) -> tune.Tuner:
    scheduler = PeakStoppingScheduler("robustness", "min", rule=rule)
    return tune.Tuner(
        tune.with_resources(replay_trainable, {"cpu": 0.5}),
        param_space=_replay_space(rule, index),
        tune_config=tune.TuneConfig(metric="robustness_best", mode="min", scheduler=scheduler, **tune_config),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(tmp_path),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute="robustness_smoothed", checkpoint_score_order="min"
            ),
            callbacks=[SchedulerStateCallback(scheduler)],
            verbose=0,
        ),
    )


@pytest.mark.integration
@pytest.mark.slow
def test_four_trial_search_stops_at_the_known_peaks_and_select_picks_them(tmp_path, ray_session) -> None:
    rule = PeakRule(smoothing="none", grace_period=0, patience=2, max_epochs=8)
    _tuner(tmp_path, "known", rule, tune.grid_search([0, 1, 2, 3])).fit()
    outcomes = {o.encoder: o for o in trial_outcomes(tmp_path / "known")}
    for index, (_, stop, peak) in enumerate(CURVES):
        outcome = outcomes[f"curve{index}"]
        assert (outcome.epochs_trained, outcome.peak_epoch) == (stop, peak)
        assert outcome.stop_reason == ("max_epochs" if stop == 8 else "peaked")
        # only the best checkpoint by smoothed score and the latest survive: the peak is among them
        assert peak in outcome.checkpoints and len(outcome.checkpoints) <= 2
    manifest = select(tmp_path / "known", per_trial=True, baselines=["final"])
    peaks = {e["encoder"]: e for e in manifest["selected"] if e["kind"] == "peak"}
    for index, (values, _, peak) in enumerate(CURVES):
        entry = peaks[f"curve{index}"]
        assert entry["epoch"] == peak and entry["score"] == values[peak - 1]
        assert json.loads((Path(entry["checkpoint"]).parent / "record.json").read_text())["epoch"] == peak
    finals = [e for e in manifest["selected"] if e["kind"] == "final"]
    assert sorted(e["epoch"] for e in finals) == sorted(stop for _, stop, _ in CURVES)
    best = select(tmp_path / "known", top_k=1)["selected"]
    assert [e["encoder"] for e in best] == ["curve3"]  # lowest smoothed score at its peak (0.30)


@pytest.mark.integration
@pytest.mark.slow
def test_scheduler_works_beside_optuna_with_concurrent_trials(tmp_path, ray_session) -> None:
    from ray.tune.search.optuna import OptunaSearch

    rule = PeakRule(smoothing="none", grace_period=0, patience=2, max_epochs=8)
    tuner = _tuner(
        tmp_path,
        "optuna",
        rule,
        tune.randint(0, 4),
        search_alg=OptunaSearch(seed=0),
        num_samples=6,
        max_concurrent_trials=3,
    )
    results = tuner.fit()
    assert len(results) == 6
    for index in range(len(results)):
        result = results[index]
        _, stop, peak = CURVES[result.config["curve_index"]]
        assert (result.metrics["epoch"], result.metrics["robustness_peak_epoch"]) == (stop, peak)
        assert math.isclose(
            result.metrics["robustness_best"], min(CURVES[result.config["curve_index"]][0][:stop])
        )


def test_state_file_is_never_behind_and_wins_over_an_older_snapshot(tmp_path) -> None:
    path = str(tmp_path / "peak-scheduler-state.json")
    values = CURVES[0][0]
    expected = _feed(PeakStoppingScheduler("robustness", "min", rule=RULE), "t", values)
    before = PeakStoppingScheduler("robustness", "min", rule=RULE, state_path=path)
    _feed(before, "t", values[:2])
    snapshot = SchedulerStateCallback(before).get_state()  # Tune's last snapshot: epochs 1-2
    _feed(before, "t", values[2:4], start=3)  # then two more results, and the driver dies
    after = PeakStoppingScheduler("robustness", "min", rule=RULE, state_path=path)
    SchedulerStateCallback(after).set_state(snapshot)
    # the trial restarts from its epoch-3 checkpoint and reports epoch 4 again
    assert _feed(after, "t", values[3:], start=4) == expected
    assert after.get_state()["histories"]["t"]["3"] == values[2]


def test_a_truncated_snapshot_is_replaced_by_the_last_good_copy(tmp_path) -> None:
    from search.snapshots import SnapshotBackup, repair_experiment_state

    state = tmp_path / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": [1, 2]}))
    assert SnapshotBackup(tmp_path).get_state() is None  # Tune calls it right after writing a snapshot
    state.write_text('{"trial_da')  # the next snapshot is cut off by a SIGKILL
    assert repair_experiment_state(tmp_path)
    assert json.loads(state.read_text()) == {"trial_data": [1, 2]}
    assert not repair_experiment_state(tmp_path)  # nothing to repair any more


def test_a_searcher_state_cut_off_to_nothing_is_replaced_and_one_without_a_copy_is_refused(tmp_path) -> None:
    """A SIGKILL during Ray's copy of a snapshot left basic-variant-state empty: Tune then logged an
    error and started every trial afresh. The last good copy goes back instead, or nothing resumes."""
    from ray import cloudpickle

    from search.snapshots import DamagedSnapshotError, SnapshotBackup, repair_experiment_state

    session = "2026-01-01_00-00-00"
    state = tmp_path / f"experiment_state-{session}.json"
    searcher = tmp_path / f"basic-variant-state-{session}.json"
    state.write_text(json.dumps({"trial_data": []}))
    searcher.write_bytes(cloudpickle.dumps({"counter": 3}))
    SnapshotBackup(tmp_path).get_state()
    searcher.write_bytes(b"")
    assert repair_experiment_state(tmp_path) == [searcher.name]
    assert cloudpickle.loads(searcher.read_bytes()) == {"counter": 3}

    newer = tmp_path / "basic-variant-state-2026-01-02_00-00-00.json"  # a newer session, never backed up
    newer.write_bytes(cloudpickle.dumps({"counter": 5})[:7])
    with pytest.raises(DamagedSnapshotError, match="cannot be resumed; rerun with --new"):
        repair_experiment_state(tmp_path)
    assert newer.exists() and state.exists()  # nothing is deleted
