"""Data-parallel pretraining trials: sharded loaders, and a Tune trial of 2 gloo workers end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from search.cli import main
from search.selection import trial_outcomes
from trainables.data.classification import ImageFolderDataset, index_split, make_loader, seed_epoch
from trainables.errors import ConfigError
from trainables.settings import PretrainTrial


def _targets(loader, seed: int, epoch: int) -> list[list[int]]:
    seed_epoch(loader, seed, epoch)
    return [batch[1].tolist() for batch in loader]


def test_worker_shards_together_make_the_single_process_batches(demo_data) -> None:
    index = index_split(demo_data["mnist"] / "val")
    dataset = ImageFolderDataset(index.samples, lambda image: torch.zeros(1), "error")
    single = make_loader(dataset, batch_size=8, train=True, num_workers=0, pin_memory=False)
    shards = [
        make_loader(dataset, batch_size=4, train=True, num_workers=0, pin_memory=False, shard=(rank, 2))
        for rank in (0, 1)
    ]
    for epoch in (1, 2):
        expected = _targets(single, seed=0, epoch=epoch)
        first, second = (_targets(shard, seed=0, epoch=epoch) for shard in shards)
        assert [a + b for a, b in zip(first, second, strict=True)] == expected
    assert _targets(single, 0, 1) != _targets(single, 0, 2)  # a new order every epoch


def test_a_micro_batch_must_split_over_the_workers(make_config) -> None:
    from search.config import load_experiment

    config = make_config("odd", pretrain__micro_batch_size=8, tune={"workers_per_trial": 3})
    with pytest.raises(ConfigError, match="does not split over 3 data-parallel workers"):
        load_experiment(config)


@pytest.mark.integration
@pytest.mark.slow
def test_a_data_parallel_trial_scores_on_rank_0_checkpoints_and_is_selected(
    tmp_path: Path, make_config, ray_session
) -> None:
    config = make_config(
        "parallel",
        pretrain__epochs=2,
        tune={"workers_per_trial": 2, "cpus_per_trial": 0.5, "checkpoint_num_to_keep": 2},
    )
    assert main(["pretrain", "--config", str(config)]) == 0
    experiment = tmp_path / "results" / "parallel"
    (trial_dir,) = [d for d in experiment.iterdir() if (d / "result.json").exists()]
    results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2]
    assert all(0 < r["robustness"] < 1 and "val_top1" in r for r in results)  # rank 0's metrics
    checkpoints = sorted((trial_dir / "train").glob("checkpoint_*/state.pt"))
    assert len(checkpoints) == 2

    (outcome,) = trial_outcomes(experiment)
    assert outcome.epochs_trained == 2 and outcome.peak_epoch in (1, 2)
    trial = PretrainTrial.from_mapping(
        json.loads((outcome.checkpoints[2] / "record.json").read_text())["config"]
    )
    assert trial.workers == 2
    assert main(["select", str(experiment)]) == 0
    (entry,) = json.loads((experiment / "selection.json").read_text())["selected"]
    weights = torch.load(entry["checkpoint"], weights_only=True)["model"]
    model = timm.create_model("resnet10t", num_classes=len(weights["fc.bias"]))
    model.load_state_dict(weights)  # plain keys: the DDP wrapper is not in the checkpoint
