"""The downstream stage as a Ray Tune experiment: U-Nets from the selected encoders.

One trial per checkpoint x mode x seed (x grid). Each trial gets
``tune.cpus_per_trial`` CPUs and ``tune.gpus_per_trial`` GPUs (fractions are
allowed: the trial then caps its own share of GPU memory), and Tune spreads
trials over every GPU of every node of the cluster. Checkpoints are kept by
validation ``dice_mean`` (the best, plus always the latest). When the search
ends, :func:`search.evaluation.evaluate_experiment` tests the best checkpoint
of every trial.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ray import tune

from search.cluster import check_cluster
from search.config import set_dotted
from search.downstream_config import DownstreamExperiment, plain
from search.experiments import run_experiment, with_trial_resources
from search.progress import print_line
from search.snapshots import SnapshotBackup
from search.spaces import build_search_alg
from trainables.finetune import finetune_trainable


def _trainable(experiment: DownstreamExperiment) -> Any:
    return with_trial_resources(finetune_trainable, experiment.config.tune)


def _param_space(experiment: DownstreamExperiment) -> dict[str, Any]:
    """The trial dict with grid searches over source, mode, seed and ``tune.grid``."""
    settings = experiment.config.tune
    if settings.search == "optuna":  # one combination (checked up front); the space is the searcher's
        return experiment.trial_configs()[0]
    space = experiment.base_trial()
    space["source"] = tune.grid_search([plain(source) for source in experiment.sources])
    space["mode"] = tune.grid_search(list(experiment.config.trials.modes))
    space["finetune"]["seed"] = tune.grid_search(list(experiment.config.trials.seeds))
    for key, values in settings.grid.items():
        set_dotted(space, key, tune.grid_search(list(values)))
    for key, domain in experiment.space.ray_domains().items():
        set_dotted(space, key, domain)
    return space


def trial_name(config: dict[str, Any], trial_id: str) -> str:
    """Source, mode and seed of a trial, filesystem-safe."""
    source, seed = config.get("source", {}), config.get("finetune", {}).get("seed", 0)
    epoch = f"@{source.get('epoch')}" if source.get("epoch") is not None else ""
    recipe = f"-{source['recipe']}" if source.get("recipe") else ""
    trial = source.get("trial_id", "")
    label = f"{source.get('encoder')}{recipe}-{source.get('kind')}{epoch}" + (
        f"-from-{trial}" if trial else ""
    )
    name = f"{label}_{config.get('mode')}_seed{seed}_{trial_id}"
    return "".join(c if c.isalnum() or c in "._=@-" else "-" for c in name)[:120]


class DownstreamPrinter(tune.Callback):
    """One line per trial and epoch: loss and validation Dice."""

    def __init__(self, out: Callable[[str], None] = print_line) -> None:
        self.out = out

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        total = trial.config.get("finetune", {}).get("epochs")
        of = f"/{total}" if total else ""
        self.out(
            f"{trial}  epoch {result.get('epoch')}{of}  "
            f"train_loss {result.get('train_loss', float('nan')):.4f}  "
            f"val dice_mean {result.get('dice_mean', float('nan')):.4f}"
        )


def build_tuner(
    experiment: DownstreamExperiment, out: Callable[[str], None], callbacks: Sequence[tune.Callback] = ()
) -> tune.Tuner:
    settings = experiment.config.tune

    def name(trial: Any) -> str:
        return trial_name(trial.config, trial.trial_id)

    return tune.Tuner(
        _trainable(experiment),
        param_space=_param_space(experiment),
        tune_config=tune.TuneConfig(
            metric="dice_mean_best",
            mode="max",
            search_alg=build_search_alg(
                settings.search,
                experiment.space,
                "dice_mean_best",
                "max",
                settings.seed,
                settings.max_concurrent_trials,
            ),
            num_samples=settings.num_samples,
            time_budget_s=settings.time_budget_s,
            max_concurrent_trials=settings.max_concurrent_trials if settings.search == "optuna" else None,
            trial_name_creator=name,
            trial_dirname_creator=name,
        ),
        run_config=tune.RunConfig(
            name=experiment.config.name,
            storage_path=experiment.config.storage_path,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=settings.checkpoint_num_to_keep,
                checkpoint_score_attribute="dice_mean",
                checkpoint_score_order="max",
            ),
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=[DownstreamPrinter(out), SnapshotBackup(experiment.path), *callbacks],
            verbose=0,
        ),
    )


def run_downstream_search(
    experiment: DownstreamExperiment,
    out: Callable[[str], None] = print_line,
    callbacks: Sequence[tune.Callback] = (),
) -> dict[str, str]:
    """Run (or resume) the downstream experiment; the one-line errors of failed trials. Needs Ray."""
    check_cluster("downstream", experiment.path, [experiment.config.data.root], experiment.config.tune)
    return run_experiment(
        experiment.path,
        experiment.resolved(),
        trainable=_trainable(experiment),
        param_space=_param_space(experiment),
        build_tuner=lambda: build_tuner(experiment, out, callbacks),
        trials=experiment.trial_count,
        out=out,
    )
