"""The Ray Tune function trainable of the pretraining stage.

Config: the nested trial dict that :class:`~trainables.settings.PretrainTrial`
validates (``classification``, ``pretrain``, ``score``, ``peak``). Every epoch
it calls ``tune.report(metrics, checkpoint=...)`` once; ``metrics`` holds
``epoch``, train/val classification metrics, ``robustness``,
``robustness_pos``, ``robustness_neg`` (suffixed per target when there are
several) and the peak rule's view of its metric. It never stops on its own
before ``pretrain.epochs``: stopping is the scheduler's job.
"""

from __future__ import annotations

from typing import Any

from trainables import tune_bridge
from trainables.checkpoints import load_training_state
from trainables.pretraining import run_pretraining
from trainables.settings import PretrainTrial


def pretrain_trainable(config: dict[str, Any]) -> None:
    """Restore from Tune's checkpoint if there is one, then pretrain and report every epoch.

    With ``workers > 1`` the trial trains data-parallel (see :mod:`trainables.parallel`); its
    checkpoints then live with the Train run, in ``<trial folder>/train/checkpoint_*``.
    """
    trial = PretrainTrial.from_mapping(config, source="trial config")
    if trial.workers > 1:
        from trainables.parallel import fit_data_parallel

        fit_data_parallel(
            trial,
            config,
            keep=trial.checkpoints_to_keep,
            keep_by=f"{trial.peak.metric}_smoothed",
            keep_mode=trial.peak.mode,
        )
        return
    run_pretraining(
        trial,
        report=tune_bridge.report,
        restore_state=tune_bridge.restore(load_training_state),
        num_threads=tune_bridge.trial_cpus(),
        labels=tune_bridge.trial_labels(),
    )
