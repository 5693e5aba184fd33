"""The Ray Tune function trainable of the downstream stage.

Config: the nested trial dict that :class:`~trainables.finetune_settings.FinetuneTrial`
validates (``data``, ``finetune``, ``source``, ``mode``, ``workers``). Every
epoch it calls ``tune.report(metrics, checkpoint=...)`` once, with ``epoch``,
``train_loss`` and the validation metrics (``dice_mean``, ``dice_<class>``,
IoU, HD95), and rewrites ``history.json`` in the trial folder. With
``workers > 1`` the trial trains data-parallel (see :mod:`trainables.parallel`).
"""

from __future__ import annotations

from typing import Any

from trainables import tune_bridge
from trainables.checkpoints import load_training_state
from trainables.finetune_settings import FinetuneTrial
from trainables.finetuning import run_finetuning


def finetune_trainable(config: dict[str, Any]) -> None:
    """Restore from Tune's checkpoint if there is one, then train and report every epoch."""
    trial = FinetuneTrial.from_mapping(config)
    if trial.workers > 1:
        from trainables.parallel import fit_data_parallel

        fit_data_parallel(trial, config, keep=2, keep_by="dice_mean", keep_mode="max")
        return
    run_finetuning(
        trial,
        report=tune_bridge.report,
        restore_state=tune_bridge.restore(load_training_state),
        num_threads=tune_bridge.trial_cpus(),
        labels=tune_bridge.trial_labels(),
        record_dir=tune_bridge.trial_dir(),
    )
