"""The pretraining stage as a Ray Tune experiment: build the Tuner, run or resume it, summarise.

The experiment lives in ``<storage_path>/<name>``; its resolved config is
saved there as ``medseg-config.yaml``. Running the same command again resumes
an interrupted experiment (``Tuner.restore``); a changed config is refused
with the list of changed keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from search.cluster import check_cluster
from search.config import Experiment, set_dotted
from search.experiments import run_experiment, with_trial_resources
from search.progress import EpochPrinter, print_line, trial_label
from search.scheduler import PeakStoppingScheduler, SchedulerStateCallback
from search.selection import TrialOutcome, trial_outcomes
from search.snapshots import SnapshotBackup
from search.spaces import build_search_alg
from trainables.pretrain import pretrain_trainable
from trainables.settings import ScoreSettings

SCHEDULER_STATE_FILE = "peak-scheduler-state.json"


def score_metric_names(score: ScoreSettings) -> list[str]:
    """The reported robustness metrics: ``robustness`` and, with several targets, one per target."""
    names = ["robustness"]
    if len(score.targets) > 1:
        names += [score.metric_names(t)["robustness"] for t in score.targets]
    return names


def _trainable(experiment: Experiment) -> Any:
    return with_trial_resources(pretrain_trainable, experiment.config.tune)


def _param_space(experiment: Experiment) -> dict[str, Any]:
    """The base trial with ``tune.grid`` as grid searches and ``tune.space`` as Ray domains
    (with Optuna the space lives in the searcher instead)."""
    settings = experiment.config.tune
    space = experiment.base_trial()
    for key, values in settings.grid.items():
        set_dotted(space, key, tune.grid_search(list(values)))
    if settings.search != "optuna":
        for key, domain in experiment.space.ray_domains().items():
            set_dotted(space, key, domain)
    return space


def build_scheduler(experiment: Experiment) -> PeakStoppingScheduler | None:
    """The peak-stopping scheduler of the experiment (None with ``tune.scheduler: fifo``)."""
    if experiment.config.tune.scheduler != "peak":
        return None
    peak = experiment.config.peak
    return PeakStoppingScheduler(
        metric=peak.metric,
        mode=peak.mode,
        rule=peak.rule(experiment.config.pretrain.epochs),
        state_path=str(experiment.path / SCHEDULER_STATE_FILE),
    )


def build_tuner(experiment: Experiment, callbacks: list[tune.Callback]) -> tune.Tuner:
    """Trials report ``<metric>`` raw, ``<metric>_smoothed`` and ``<metric>_best``: the scheduler
    watches the raw score, checkpoints are kept by the smoothed one (so the peak survives), and
    Ray's best result and searchers see the running best."""
    settings, peak = experiment.config.tune, experiment.config.peak
    grid_keys = list(settings.grid) + experiment.space.keys
    scheduler = build_scheduler(experiment)
    callbacks = [*callbacks, SnapshotBackup(experiment.path)]
    if scheduler is not None:
        callbacks.append(SchedulerStateCallback(scheduler))

    def name_trial(trial: Any) -> str:
        return trial_label(trial.config, grid_keys, trial.trial_id)

    return tune.Tuner(
        _trainable(experiment),
        param_space=_param_space(experiment),
        tune_config=tune.TuneConfig(
            metric=f"{peak.metric}_best",
            mode=peak.mode,
            scheduler=scheduler,
            search_alg=build_search_alg(
                settings.search,
                experiment.space,
                f"{peak.metric}_best",
                peak.mode,
                settings.seed,
                settings.max_concurrent_trials,
            ),
            num_samples=settings.num_samples,
            time_budget_s=settings.time_budget_s,
            # the variant generator holds its own limit; Tune wraps Optuna in a ConcurrencyLimiter
            max_concurrent_trials=settings.max_concurrent_trials if settings.search == "optuna" else None,
            trial_name_creator=name_trial,
            trial_dirname_creator=name_trial,
        ),
        run_config=_run_config(experiment, callbacks),
    )


def _run_config(experiment: Experiment, callbacks: list[tune.Callback]) -> tune.RunConfig:
    settings, peak = experiment.config.tune, experiment.config.peak
    keep = settings.checkpoint_num_to_keep
    return tune.RunConfig(
        name=experiment.config.name,
        storage_path=experiment.config.storage_path,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=keep,
            checkpoint_score_attribute=f"{peak.metric}_smoothed" if keep else None,
            checkpoint_score_order=peak.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        callbacks=callbacks,
        verbose=0,
    )


def run_pretrain_search(
    experiment: Experiment,
    out: Callable[[str], None] = print_line,
    callbacks: Sequence[tune.Callback] = (),
) -> SearchOutcome:
    """Run (or resume) the pretraining experiment; returns what each trial did.

    ``callbacks`` (MLflow tracking, say) join the progress printer. Needs a
    Ray session (see :func:`search.runtime.ray_session`).
    """
    check_cluster(
        "pretraining",
        experiment.path,
        sorted(
            {v["classification"]["root"] for v in experiment.variants}
            | {t["root"] for v in experiment.variants for t in v["score"]["targets"]}
        ),
        experiment.config.tune,
    )
    printer = EpochPrinter(score_metric_names(experiment.config.score), experiment.config.peak.metric, out)
    errors = run_experiment(
        experiment.path,
        experiment.resolved(),
        trainable=_trainable(experiment),
        param_space=_param_space(experiment),
        build_tuner=lambda: build_tuner(experiment, [printer, *callbacks]),
        trials=experiment.trial_count,
        out=out,
    )
    return SearchOutcome(trial_outcomes(experiment.path) if _has_checkpoints(experiment.path) else [], errors)


@dataclass(frozen=True)
class SearchOutcome:
    """The trials of a finished (or interrupted) search, and the one-line errors of failed ones."""

    trials: list[TrialOutcome]
    errors: dict[str, str]


def _has_checkpoints(path: Path) -> bool:
    return any(path.glob("*/checkpoint_*/record.json"))
