"""The pretraining loop without Ray: metrics per epoch, LR schedule, bitwise resume."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables.checkpoints import load_training_state
from trainables.pretraining import TIMING_METRICS, run_pretraining
from trainables.settings import PretrainTrial


def tiny_trial(demo_data: dict[str, Path], **pretrain: Any) -> PretrainTrial:
    settings = {
        "model": "resnet10t",
        "epochs": 3,
        "image_size": 32,
        "batch_size": 16,
        "micro_batch_size": 8,
        "lr": 0.002,
        "warmup_epochs": 1,
        "train_batches_per_epoch": 4,
        "val_batches": 2,
        **pretrain,
    }
    return PretrainTrial.from_mapping(
        {
            "classification": {"root": str(demo_data["mnist"]), "num_workers": 0},
            "pretrain": settings,
            "score": {
                "targets": [{"name": "brain", "root": str(demo_data["brain"])}],
                "n_images": 8,
                "image_size": 32,
            },
        }
    )


class Recorder:
    """A report() that keeps every epoch's metrics and training state, as Tune would."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path) -> None:
        self.metrics.append(metrics)
        self.states.append(load_training_state(checkpoint_dir))


def _results(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMING_METRICS} for m in metrics]


def test_every_epoch_reports_accuracy_score_and_a_checkpoint(demo_data) -> None:
    recorder = Recorder()
    run_pretraining(tiny_trial(demo_data), report=recorder)
    assert [m["epoch"] for m in recorder.metrics] == [1, 2, 3]
    for metrics in recorder.metrics:
        for key in (
            "train_loss",
            "val_loss",
            "val_top1",
            "val_top5",
            "robustness",
            "robustness_pos",
            "robustness_neg",
            "lr",
        ):
            assert math.isfinite(metrics[key]), key
        assert 0 <= metrics["val_top1"] <= metrics["val_top5"] <= 1
        assert 0 <= metrics["robustness"] <= 0.5 + 2
    state = recorder.states[-1]
    assert state["epoch"] == 3 and state["model_name"] == "resnet10t"
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert state["num_updates"] == 3 * 2  # 4 micro-batches of 8 per epoch, 2 per update of 16


def test_lr_follows_warmup_then_cosine_over_the_full_horizon_stepped_per_update(demo_data) -> None:
    recorder = Recorder()
    epochs, warmup, updates_per_epoch, lr, lr_min = 4, 2, 2, 0.002, 1e-6
    run_pretraining(tiny_trial(demo_data, epochs=epochs, warmup_epochs=warmup), report=recorder)
    total, warmup_updates = epochs * updates_per_epoch, warmup * updates_per_epoch

    def expected(t: int) -> float:  # timm's CosineLRScheduler (warmup_prefix=False), after update t
        if t < warmup_updates:
            start = lr * 1e-6
            return start + t * (lr - start) / warmup_updates
        return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / total))

    lrs = [m["lr"] for m in recorder.metrics]
    assert lrs == pytest.approx([expected(e * updates_per_epoch) for e in range(1, epochs + 1)], rel=1e-9)
    assert lrs[0] < lrs[1] and lrs[1] > lrs[2] > lrs[3]


@pytest.mark.parametrize(
    ("recipe", "workers"),
    [("simple", 0), ("advanced", 0), pytest.param("advanced", 2, marks=pytest.mark.slow)],
)
def test_resumed_run_reports_bitwise_identical_metrics(demo_data, recipe: str, workers: int) -> None:
    trial = tiny_trial(demo_data, recipe=recipe)
    if workers:  # augmentation then runs in loader processes, seeded from the loader's generator
        trial = PretrainTrial.from_mapping(
            {
                **dataclasses.asdict(trial),
                "classification": {**dataclasses.asdict(trial.classification), "num_workers": workers},
            }
        )
    uninterrupted = Recorder()
    run_pretraining(trial, report=uninterrupted)

    resumed = Recorder()
    run_pretraining(trial, report=resumed, restore_state=uninterrupted.states[0])  # crash after epoch 1
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]
    assert _results(resumed.metrics) == _results(uninterrupted.metrics[1:])
    assert resumed.states[-1]["history"] == uninterrupted.states[-1]["history"]


def test_several_targets_are_reported_by_name_and_the_primary_unsuffixed(demo_data) -> None:
    trial = tiny_trial(demo_data, epochs=1)
    brain = str(demo_data["brain"])
    targets = [
        {"name": "axial", "root": brain},
        {"name": "sagittal", "root": brain, "slice_axis": 0, "primary": True},
    ]
    raw = dataclasses.asdict(trial)
    raw["score"] = {**raw["score"], "targets": targets}
    recorder = Recorder()
    run_pretraining(PretrainTrial.from_mapping(raw), report=recorder)
    (metrics,) = recorder.metrics
    for name in ("axial", "sagittal"):
        for key in ("robustness", "robustness_pos", "robustness_neg"):
            assert math.isfinite(metrics[f"{key}_{name}"])
    assert metrics["robustness"] == metrics["robustness_sagittal"] != metrics["robustness_axial"]


def test_unreadable_training_images_are_skipped_and_counted(demo_data, small_imagenet: Path) -> None:
    (
        small_imagenet
        / "train"
        / "digit_1"
        / sorted(p.name for p in (small_imagenet / "train" / "digit_1").iterdir())[0]
    ).write_bytes(b"broken")
    raw = dataclasses.asdict(tiny_trial(demo_data, epochs=1, train_batches_per_epoch=None, val_batches=None))
    raw["classification"] = {**raw["classification"], "root": str(small_imagenet)}
    recorder = Recorder()
    run_pretraining(PretrainTrial.from_mapping(raw), report=recorder)
    assert recorder.metrics[0]["train_skipped_images"] == 1
    assert recorder.metrics[0]["val_skipped_images"] == 0


def test_best_accuracy_weights_travel_in_every_checkpoint_and_survive_a_resume(demo_data) -> None:
    trial = tiny_trial(demo_data, keep_best_accuracy=True, val_batches=4)
    recorder = Recorder()
    run_pretraining(trial, report=recorder)
    top1 = [m["val_top1"] for m in recorder.metrics]
    best = top1.index(max(top1))  # earliest of ties
    last = recorder.states[-1]
    assert last["best_accuracy_epoch"] == best + 1
    best_weights = recorder.states[best]["model"]
    assert all(torch.equal(last["best_accuracy_model"][k], best_weights[k]) for k in best_weights)
    resumed = Recorder()
    run_pretraining(trial, report=resumed, restore_state=recorder.states[0])
    assert resumed.states[-1]["best_accuracy_epoch"] == best + 1
