"""Data-parallel trials of both stages: the Tune trial drives a Ray Train ``TorchTrainer`` (Train V2).

Ray 2.60 runs Train V2, where ``Tuner(TorchTrainer)`` no longer works: the
Tune function trainable builds and fits a ``TorchTrainer`` whose workers run
:func:`trainables.finetuning.run_finetuning` or
:func:`trainables.pretraining.run_pretraining` with a
:class:`~trainables.distributed.Distribution` (DistributedDataParallel over
NCCL on GPUs, gloo on CPUs). ``TuneReportCallback`` forwards the main
worker's metrics to Tune. Checkpoints live with the Train run, in
``<trial folder>/train/checkpoint_*``; a Train run with the same name and
storage path resumes from its latest checkpoint, so a restored Tune trial
continues where its workers stopped.

Only the CPU/gloo path has been run (tests, this project's machines); the
NCCL and multi-GPU paths follow Ray's documentation and were not run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer, prepare_model
from ray.tune.integration.ray_train import TuneReportCallback
from torch import nn

from trainables import tune_bridge
from trainables.checkpoints import load_training_state
from trainables.distributed import Distribution, all_reduce_mean
from trainables.finetune_settings import FinetuneTrial
from trainables.finetuning import run_finetuning
from trainables.pretraining import run_pretraining
from trainables.settings import PretrainTrial

TRAIN_RUN_NAME = "train"


def _wrap(model: nn.Module) -> nn.Module:
    return prepare_model(model, move_to_device=False)


def _report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)


def _worker_state() -> tuple[Any, Distribution]:
    """The Train run's checkpoint to resume from (or None) and this worker's place."""
    context = ray.train.get_context()
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_training_state(folder)
    return state, Distribution(context.get_world_rank(), context.get_world_size(), _wrap, all_reduce_mean)


def finetune_worker_loop(config: dict[str, Any]) -> None:
    """What every Train worker of a downstream trial runs: resume, then fine-tune."""
    trial = FinetuneTrial.from_mapping(config["trial"])
    state, distribution = _worker_state()
    run_finetuning(
        trial,
        report=_report,
        restore_state=state,
        device="cuda" if trial.gpus_per_worker > 0 else "cpu",
        num_threads=max(1, int(trial.cpus_per_worker)),
        labels=config["labels"],
        record_dir=Path(config["record_dir"]),
        distribution=distribution,
    )


def pretrain_worker_loop(config: dict[str, Any]) -> None:
    """What every Train worker of a pretraining trial runs: resume, then pretrain (rank 0 scores)."""
    trial = PretrainTrial.from_mapping(config["trial"])
    state, distribution = _worker_state()
    run_pretraining(
        trial,
        report=_report,
        restore_state=state,
        device="cuda" if trial.gpus_per_worker > 0 else "cpu",
        num_threads=max(1, int(trial.cpus_per_worker)),
        labels=config["labels"],
        distribution=distribution,
    )


def fit_data_parallel(
    trial: FinetuneTrial | PretrainTrial,
    config: dict[str, Any],
    *,
    keep: int | None,
    keep_by: str,
    keep_mode: str,
) -> None:
    """Train ``trial`` on ``trial.workers`` Ray Train workers and forward their metrics to Tune.

    The Train run keeps ``keep`` checkpoints (all with None), the best by ``keep_by``
    (``keep_mode`` max or min), plus always the latest.
    """
    use_gpu = trial.gpus_per_worker > 0
    resources = {
        "CPU": trial.cpus_per_worker,
        **({"GPU": trial.gpus_per_worker} if use_gpu else {}),
        **trial.custom_resources,
    }
    trial_dir = tune_bridge.trial_dir()
    loop = pretrain_worker_loop if isinstance(trial, PretrainTrial) else finetune_worker_loop
    trainer = TorchTrainer(
        loop,
        train_loop_config={
            "trial": config,
            "labels": tune_bridge.trial_labels(),
            "record_dir": str(trial_dir),
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=trial.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=TRAIN_RUN_NAME,
            storage_path=tune_bridge.trial_storage_path(),  # shared: workers on other nodes upload there
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]  # Ray's own types disagree
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=keep,
                checkpoint_score_attribute=keep_by if keep else None,
                checkpoint_score_order=keep_mode,
            ),
        ),
    )
    trainer.fit()
