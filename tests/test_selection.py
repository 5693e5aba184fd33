"""Selection from the checkpoint records of trials, written as Tune lays them out (no Ray needed)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from search.cli import main
from search.selection import select, trial_outcomes
from trainables.errors import MedsegError
from trainables.pretraining import run_pretraining
from trainables.settings import PretrainTrial


def _tiny_trial(demo_data: dict[str, Path], **pretrain) -> PretrainTrial:
    return PretrainTrial.from_mapping(
        {
            "classification": {"root": str(demo_data["mnist"]), "num_workers": 0},
            "pretrain": {
                "model": "resnet10t",
                "epochs": 3,
                "image_size": 32,
                "batch_size": 16,
                "micro_batch_size": 8,
                "warmup_epochs": 1,
                "train_batches_per_epoch": 2,
                "val_batches": 2,
                **pretrain,
            },
            "score": {
                "targets": [{"name": "brain", "root": str(demo_data["brain"])}],
                "n_images": 8,
                "image_size": 32,
            },
            "peak": {"smoothing": "none", "grace_period": 0, "patience": 5},
        }
    )


def _run_into(trial_dir: Path, trial: PretrainTrial) -> None:
    """Run a trial and keep every checkpoint folder where Tune would put it."""

    def report(metrics, checkpoint_dir: Path) -> None:
        shutil.copytree(checkpoint_dir, trial_dir / f"checkpoint_{metrics['epoch'] - 1:06d}")

    run_pretraining(trial, report=report, labels={"trial_id": trial_dir.name, "trial_name": trial_dir.name})


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, demo_data) -> Path:
    root = tmp_path_factory.mktemp("experiment")
    _run_into(root / "kept", _tiny_trial(demo_data, keep_best_accuracy=True))
    _run_into(root / "plain", _tiny_trial(demo_data, recipe="advanced"))
    return root


def test_outcomes_name_peak_stop_and_encoder(experiment: Path) -> None:
    outcomes = {o.trial_name: o for o in trial_outcomes(experiment)}
    assert set(outcomes) == {"kept", "plain"}
    for outcome in outcomes.values():
        rows = outcome.history
        best = min(rows, key=lambda r: r["robustness"])
        assert outcome.peak_epoch == best["epoch"]
        assert outcome.epochs_trained == 3 and outcome.stop_reason == "max_epochs"
        assert outcome.encoder == "resnet10t"
    assert outcomes["plain"].recipe == "advanced"


def _synthetic_trial(root: Path, kept_epochs: set[int], keep_best_accuracy: bool) -> Path:
    """A trial of 4 epochs: robustness peaks at epoch 2, top-1 at epoch 3; only ``kept_epochs`` survive."""
    history = [
        {"epoch": e, "robustness": r, "robustness_smoothed": r, "val_top1": a}
        for e, r, a in zip([1, 2, 3, 4], [0.5, 0.3, 0.4, 0.45], [0.1, 0.2, 0.6, 0.3], strict=True)
    ]
    rule = {"mode": "min", "smoothing": "none", "grace_period": 0, "patience": 10, "max_epochs": 10}
    trial = root / "synthetic"
    for epoch in kept_epochs:
        folder = trial / f"checkpoint_{epoch - 1:06d}"
        folder.mkdir(parents=True)
        record = {
            "epoch": epoch,
            "trial_id": "t",
            "trial_name": "synthetic",
            "encoder": "resnet10t",
            "recipe": "simple",
            "metric": "robustness",
            "rule": rule,
            "config": {"pretrain": {"keep_best_accuracy": keep_best_accuracy}},
            "history": history[:epoch],
        }
        (folder / "record.json").write_text(json.dumps(record))
    return root


def test_the_peak_checkpoint_must_have_been_kept(tmp_path: Path) -> None:
    experiment = _synthetic_trial(tmp_path, {3, 4}, keep_best_accuracy=False)
    with pytest.raises(
        MedsegError, match=r"peak checkpoint \(epoch 2\).*keep more with tune.checkpoint_num_to_keep"
    ):
        select(experiment)


def test_best_accuracy_baseline_comes_from_its_checkpoint_or_the_kept_weights(tmp_path: Path) -> None:
    kept = select(_synthetic_trial(tmp_path / "a", {2, 3, 4}, False), baselines=["best_accuracy"])["selected"]
    assert [(e["kind"], e["epoch"], e["weights_key"]) for e in kept] == [
        ("peak", 2, "model"),
        ("best_accuracy", 3, "model"),
    ]
    assert kept[1]["checkpoint"].endswith("checkpoint_000002/state.pt")
    inside = select(_synthetic_trial(tmp_path / "b", {2, 4}, True), baselines=["best_accuracy", "final"])[
        "selected"
    ]
    assert [(e["kind"], e["epoch"], e["weights_key"]) for e in inside] == [
        ("peak", 2, "model"),
        ("best_accuracy", 3, "best_accuracy_model"),
        ("final", 4, "model"),
    ]
    assert inside[1]["checkpoint"].endswith("checkpoint_000003/state.pt")  # the latest checkpoint holds them
    with pytest.raises(MedsegError, match="run the search with pretrain.keep_best_accuracy=true"):
        select(_synthetic_trial(tmp_path / "c", {2, 4}, False), baselines=["best_accuracy"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"top_k": 0}, "at least 1"), ({"baselines": ["random"]}, "unknown baseline")],
)
def test_bad_selection_requests_are_refused(experiment: Path, kwargs, message) -> None:
    with pytest.raises(MedsegError, match=message):
        select(experiment, **kwargs)


def test_experiments_without_checkpoints_or_metric_are_refused(tmp_path: Path, experiment: Path) -> None:
    (tmp_path / "empty" / "trial").mkdir(parents=True)
    with pytest.raises(MedsegError, match="holds no checkpoints"):
        select(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(experiment / "plain", broken / "plain")
    for record_file in broken.glob("*/checkpoint_*/record.json"):
        record = json.loads(record_file.read_text())
        record["metric"] = "robustness_acdc"
        record_file.write_text(json.dumps(record))
    with pytest.raises(MedsegError, match="never reported 'robustness_acdc'"):
        select(broken)


def test_select_command_writes_the_manifest(experiment: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "manifest.json"
    assert main(["select", str(experiment), "--per-trial", "--baselines", "final", "--out", str(out)]) == 0
    manifest = json.loads(out.read_text())
    kinds = sorted((e["trial_name"], e["kind"]) for e in manifest["selected"])
    assert kinds == [("kept", "final"), ("kept", "peak"), ("plain", "final"), ("plain", "peak")]
    for entry in manifest["selected"]:
        assert set(entry) >= {
            "trial_id",
            "encoder",
            "recipe",
            "epoch",
            "score",
            "score_smoothed",
            "val_top1",
            "epochs_trained",
            "stop_reason",
            "checkpoint",
        }
        assert Path(entry["checkpoint"]).is_absolute() and Path(entry["checkpoint"]).exists()
    assert "selection manifest" in capsys.readouterr().out
    assert main(["select", str(tmp_path / "nothing-here")]) == 2


def test_trial_settings_round_trip_through_the_record(experiment: Path, demo_data) -> None:
    record = json.loads(next((experiment / "kept").glob("checkpoint_*/record.json")).read_text())
    rebuilt = PretrainTrial.from_mapping(record["config"])
    assert rebuilt == _tiny_trial(demo_data, keep_best_accuracy=True)
    assert record["rule"] == dataclasses.asdict(rebuilt.rule)
