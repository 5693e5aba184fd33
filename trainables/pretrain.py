"""The Ray Tune function trainable of the pretraining stage.

Config: the nested trial dict that :class:`~trainables.settings.PretrainTrial`
validates (``classification``, ``pretrain``, ``score``). Every epoch it calls
``tune.report(metrics, checkpoint=...)`` once; ``metrics`` holds ``epoch``,
train/val classification metrics and ``robustness``, ``robustness_pos``,
``robustness_neg`` (suffixed per target when there are several). It never
stops on its own before ``pretrain.epochs``: stopping is the scheduler's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from trainables.checkpoints import load_training_state
from trainables.pretraining import run_pretraining
from trainables.settings import PretrainTrial


def _report(metrics: dict[str, Any], checkpoint_dir: Path) -> None:
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))


def _trial_cpus() -> int | None:
    resources = tune.get_context().get_trial_resources()
    cpus = resources.required_resources.get("CPU") if resources else None
    return max(1, int(cpus)) if cpus else None


def pretrain_trainable(config: dict[str, Any]) -> None:
    """Restore from Tune's checkpoint if there is one, then pretrain and report every epoch."""
    trial = PretrainTrial.from_mapping(config, source="trial config")
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as restore_dir:
            state = load_training_state(restore_dir)
    context = tune.get_context()
    labels = {"trial_id": context.get_trial_id(), "trial_name": context.get_trial_name()}
    run_pretraining(trial, report=_report, restore_state=state, num_threads=_trial_cpus(), labels=labels)
