"""The downstream stage end to end: a Tune run from a manifest, the test step, data-parallel trials."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from ray import tune

from search.cli import main
from trainables.finetune import finetune_trainable
from trainables.finetune_settings import FinetuneTrial
from trainables.finetuning import HISTORY_FILE, run_finetuning


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    checkpoint = tmp_path / "pretrain" / "checkpoint_000002" / "state.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": timm.create_model("resnet10t", num_classes=10).state_dict()}, checkpoint)
    entry = {
        "kind": "peak",
        "trial_id": "abc_00000",
        "trial_name": "resnet10t_recipe=simple_abc_00000",
        "encoder": "resnet10t",
        "recipe": "simple",
        "epoch": 3,
        "score": 0.4123,
        "checkpoint": str(checkpoint),
        "weights_key": "model",
        "normalize": "imagenet",
    }
    path = tmp_path / "selection.json"
    path.write_text(json.dumps({"selected": [entry]}))
    return path


def _config(tmp_path: Path, root: Path, **trials) -> Path:
    config = {
        "name": "down",
        "storage_path": str(tmp_path / "results"),
        "data": {"root": str(root), "classes": ["background", "square"], "image_size": 32, "num_workers": 0},
        "finetune": {"epochs": 2, "batch_size": 4, "device": "cpu"},
        "trials": {
            "kinds": ["peak"],
            "modes": ["finetune", "frozen"],
            "seeds": [0],
            "random_init": True,
            **trials,
        },
        "tune": {"cpus_per_trial": 1},
    }
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.integration
@pytest.mark.slow
def test_downstream_runs_every_checkpoint_and_mode_then_tests_each_once(
    tmp_path, tiny_segmentation_set, manifest, ray_session, capsys
) -> None:
    config = _config(tmp_path, tiny_segmentation_set)
    assert main(["downstream", "--manifest", str(manifest), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    experiment = tmp_path / "results" / "down"
    trials = sorted(d for d in experiment.iterdir() if (d / HISTORY_FILE).exists())
    assert len(trials) == 4  # (peak, random_init) x (finetune, frozen)
    for trial in trials:
        history = json.loads((trial / HISTORY_FILE).read_text())["history"]
        assert [row["epoch"] for row in history] == [1, 2]
        metrics = json.loads((trial / "test_metrics.json").read_text())
        assert math.isfinite(metrics["test_dice_mean"]) and metrics["split_mode"] == "by_case"
        assert metrics["test_hd95_unit"] == "pixels" and metrics["epoch"] in (1, 2)
        with open(trial / "test_cases.csv") as stream:
            rows = list(csv.DictReader(stream))
        assert sorted(r["case_id"] for r in rows) == ["test0", "test1", "test2"]
    table = out.split("\ncheckpoint ", 1)[1]
    for kind in ("peak", "random_init"):
        for mode in ("finetune", "frozen"):
            assert any(line.startswith(kind) and f" {mode} " in line for line in table.splitlines()), (
                kind,
                mode,
            )
    assert "0.4123" in table and "resnet10t_recipe=simple_abc_00000" in table

    # evaluate is idempotent: nothing is tested again unless forced
    assert main(["evaluate", str(experiment)]) == 0
    assert "testing" not in capsys.readouterr().out
    assert main(["evaluate", str(experiment), "--force"]) == 0
    assert capsys.readouterr().out.count("testing ") == 4


def test_bad_downstream_input_is_refused_on_one_line(
    tmp_path, tiny_segmentation_set, manifest, capsys
) -> None:
    config = _config(tmp_path, tiny_segmentation_set)
    cases = [
        (["--manifest", str(tmp_path / "missing.json")], "cannot read selection manifest"),
        (["--set", "data.classes=null"], "classes is required for the generic format"),
        (["--set", "data.image_size=50"], "must be a multiple of 32"),
        (
            ["--set", "trials.kinds=[final]", "--set", "trials.random_init=false"],
            "no checkpoint to fine-tune",
        ),
    ]
    for extra, message in cases:
        argv = ["downstream", "--config", str(config)] + (
            extra if extra[0] == "--manifest" else ["--manifest", str(manifest), *extra]
        )
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    Path(json.loads(manifest.read_text())["selected"][0]["checkpoint"]).unlink()
    assert main(["downstream", "--manifest", str(manifest), "--config", str(config)]) == 2
    assert "does not exist: rerun medseg-search select" in capsys.readouterr().err


def _dp_trial(root: Path, workers: int) -> dict:
    return {
        "data": {
            "root": str(root),
            "classes": ["background", "square"],
            "image_size": 32,
            "augment": "none",
            "num_workers": 0,
        },
        "finetune": {
            "epochs": 1,
            "batch_size": 4,
            "loss": "cross_entropy",
            "freeze_batchnorm": True,
            "record_step_losses": 5,
            "train_batches_per_epoch": 5,
            "device": "cpu",
        },
        "source": {"kind": "random_init", "encoder": "resnet10t"},
        "workers": workers,
        "cpus_per_worker": 0.5,
    }


@pytest.mark.integration
@pytest.mark.slow
def test_two_gloo_workers_follow_the_single_process_step_by_step(tmp_path, demo_data, ray_session) -> None:
    """Augmentation off, BatchNorm frozen, a per-sample loss: the same global batches give the same losses."""
    brain = {
        "root": str(demo_data["brain"]),
        "classes": ["background", "csf", "grey", "white"],
        "split": {"mode": "slice_blocks"},
    }
    single_config = _dp_trial(demo_data["brain"], 1)
    single_config["data"].update(brain)
    run_finetuning(FinetuneTrial.from_mapping(single_config), report=lambda m, d: None, record_dir=tmp_path)
    single = json.loads((tmp_path / HISTORY_FILE).read_text())["step_losses"]

    parallel_config = _dp_trial(demo_data["brain"], 2)
    parallel_config["data"].update(brain)
    results = tune.Tuner(
        tune.with_resources(finetune_trainable, {"cpu": 0.01}),  # the trial only drives the TorchTrainer
        param_space=parallel_config,
        run_config=tune.RunConfig(name="dp", storage_path=str(tmp_path / "results"), verbose=0),
    ).fit()
    assert results[0].error is None
    parallel = json.loads((Path(results[0].path) / HISTORY_FILE).read_text())["step_losses"]
    assert len(single) == len(parallel) == 5
    assert parallel == pytest.approx(single, abs=1e-4)
    assert results[0].metrics["checkpoint_path"].endswith(tuple("0123456789"))  # kept with the Train run
    assert list(Path(results[0].path).glob("train/checkpoint_*/record.json"))


LOGICAL_GPUS = """
import sys
import ray
from search.cli import main

ray.init(address="local", num_cpus=2, num_gpus=1, logging_level="WARNING")  # a GPU that does not exist
sys.exit(main(["downstream", "--manifest", sys.argv[1], "--config", sys.argv[2],
               "--set", "tune.gpus_per_trial=0.5", "--set", "tune.cpus_per_trial=0.5"]))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_fractional_gpu_trials_run_on_logical_gpus(tmp_path, tiny_segmentation_set, manifest) -> None:
    """The fractional-GPU path of the downstream search on a machine without GPUs: Ray schedules
    trials of half a logical GPU each; with no CUDA device they train on the CPU."""
    import subprocess
    import sys

    config = _config(tmp_path, tiny_segmentation_set, kinds=["peak"], modes=["finetune"], random_init=True)
    done = subprocess.run(
        [sys.executable, "-c", LOGICAL_GPUS, str(manifest), str(config)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    experiment = tmp_path / "results" / "down"
    assert len(list(experiment.glob("*/test_metrics.json"))) == 2
    for history in experiment.glob(f"*/{HISTORY_FILE}"):
        assert json.loads(history.read_text())["resources"] == {"CPU": 0.5, "GPU": 0.5}
