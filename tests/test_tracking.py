"""MLflow tracking without Ray trials: one run per key, continuous histories across a restore, lineage."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.environment import fingerprint, record
from search.tracking import KEY_TAG, MlflowTracker, Tracking, default_uri, flatten, lineage_tags


@pytest.fixture
def tracking(tmp_path: Path) -> Tracking:
    return Tracking(default_uri(tmp_path), "medseg/test", tmp_path / "artifacts", str(tmp_path))


class _Trial(SimpleNamespace):
    def __str__(self) -> str:
        return f"resnet10t_{self.trial_id}"


def _trial(trial_id: str, path: Path, **config) -> _Trial:
    return _Trial(trial_id=trial_id, config=config, path=str(path))


def test_a_key_names_one_run_found_again_and_reopened(tracking: Tracking) -> None:
    first = tracking.run("stage/pretrain", "pretrain")
    tracking.finish(first)
    assert tracking.client.get_run(first).info.status == "FINISHED"
    again = tracking.run("stage/pretrain", "pretrain")
    assert again == first
    assert tracking.client.get_run(first).info.status == "RUNNING"
    child = tracking.run("pretrain/t1", "t1", parent=first)
    assert tracking.client.get_run(child).data.tags["mlflow.parentRunId"] == first
    assert tracking.finish_open_runs("KILLED") == 2
    assert {r.info.status for r in tracking.runs()} == {"KILLED"}
    assert [r.data.tags[KEY_TAG] for r in tracking.runs("pretrain")] == ["pretrain/t1"]


def test_another_pipeline_in_the_same_database_has_its_own_runs(tmp_path: Path, tracking: Tracking) -> None:
    other = Tracking(tracking.uri, tracking.experiment, None, str(tmp_path / "other"))
    assert tracking.run("pipeline", "a") != other.run("pipeline", "b")
    assert len(tracking.runs()) == len(other.runs()) == 1


def test_a_restored_trial_keeps_one_run_and_a_continuous_history(tmp_path: Path, tracking: Tracking) -> None:
    tracking.run("stage/pretrain", "pretrain")
    trial = _trial("t1", tmp_path, pretrain={"model": "resnet10t", "recipe": "simple"}, seed=0)
    tracker = MlflowTracker(tracking, "pretrain", "stage/pretrain")
    tracker.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        tracker.on_trial_result(0, [], trial, {"epoch": epoch, "loss": 1.0 / epoch, "config": {}})

    # the driver dies; Tune restores the trial from its epoch-2 checkpoint and replays epoch 3
    restored = pickle.loads(pickle.dumps(tracker))
    restored.on_trial_start(0, [], trial)
    for epoch, loss in ((3, 99.0), (4, 0.25)):
        restored.on_trial_result(0, [], trial, {"epoch": epoch, "loss": loss, "nan": float("nan")})
    restored.on_trial_complete(0, [], trial)

    (run,) = tracking.runs("pretrain")
    assert run.info.status == "FINISHED" and run.info.run_name == "resnet10t_t1"
    assert run.data.params["pretrain.recipe"] == "simple" and run.data.params["seed"] == "0"
    history = tracking.client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert tracking.client.get_metric_history(run.info.run_id, "nan") == []
    assert run.data.tags["mlflow.parentRunId"] == tracking.find("stage/pretrain").info.run_id


def test_a_failed_trial_ends_failed(tmp_path: Path, tracking: Tracking) -> None:
    tracker = MlflowTracker(tracking, "downstream", "stage/downstream")
    tracker.on_trial_error(0, [], _trial("t2", tmp_path))
    (run,) = tracking.runs("downstream")
    assert run.info.status == "FAILED"


def test_lineage_tags_name_the_pretraining_run_epoch_score_and_kind(tracking: Tracking) -> None:
    pretraining = tracking.run("pretrain/abc_00001", "resnet10t simple")
    source = {"kind": "peak", "encoder": "resnet10t", "trial_id": "abc_00001", "epoch": 3, "score": 0.41}
    tags = lineage_tags(tracking, {"source": source, "mode": "frozen"})
    assert tags["medseg.source.run_id"] == pretraining
    assert (tags["medseg.source.kind"], tags["medseg.source.epoch"], tags["medseg.source.score"]) == (
        "peak",
        "3",
        "0.41",
    )
    random_init = lineage_tags(tracking, {"source": {"kind": "random_init", "encoder": "resnet10t"}})
    assert random_init["medseg.source.kind"] == "random_init" and "medseg.source.run_id" not in random_init
    assert lineage_tags(tracking, {"pretrain": {}}) == {}


def test_nested_configs_become_dotted_short_params() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": "x" * 900}}, "e": [1, 2]})
    assert flat["a.b"] == "1" and len(flat["a.c.d"]) == 500 and flat["e"] == "[1, 2]"


def test_fingerprint_follows_the_file_list_and_sizes(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "train" / "a.png").write_bytes(b"1234")
    before = fingerprint(root)
    assert (before["files"], before["bytes"]) == (1, 4)
    assert fingerprint(root) == before
    (root / "train" / "b.png").write_bytes(b"12")
    after = fingerprint(root)
    assert (after["files"], after["bytes"]) == (2, 6) and after["sha256"] != before["sha256"]


def test_environment_names_packages_commit_and_accelerators(tmp_path: Path) -> None:
    environment = record([str(tmp_path), str(tmp_path), str(tmp_path / "missing")])
    assert environment["packages"]["torch"] and environment["packages"]["ray"]
    assert "git_commit" in environment and environment["gpus"] == [] and environment["cuda"] is None
    assert len(environment["datasets"]) == 1
