"""The pretraining stage as a Ray Tune experiment: build the Tuner, run or resume it, summarise.

The experiment lives in ``<storage_path>/<name>``; its resolved config is
saved there as ``medseg-config.yaml``. Running the same command again resumes
an interrupted experiment (``Tuner.restore``); a changed config is refused
with the list of changed keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from ray import tune

from search.config import CONFIG_FILE, Experiment, changed_keys, dump_yaml
from search.progress import EpochPrinter, error_line, print_line, shorten_user_errors, trial_label
from trainables.errors import ConfigError
from trainables.pretrain import pretrain_trainable
from trainables.settings import ScoreSettings


def score_metric_names(score: ScoreSettings) -> list[str]:
    """The reported robustness metrics: ``robustness`` and, with several targets, one per target."""
    names = ["robustness"]
    if len(score.targets) > 1:
        names += [score.metric_names(t)["robustness"] for t in score.targets]
    return names


def _trainable(experiment: Experiment) -> Any:
    tune_settings = experiment.config.tune
    return tune.with_resources(
        pretrain_trainable, {"cpu": tune_settings.cpus_per_trial, "gpu": tune_settings.gpus_per_trial}
    )


def _param_space(experiment: Experiment) -> dict[str, Any]:
    space = experiment.base_trial()
    for key, values in experiment.config.tune.grid.items():
        *parents, leaf = key.split(".")
        node = space
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tune.grid_search(list(values))
    return space


def build_tuner(experiment: Experiment, callbacks: list[tune.Callback]) -> tune.Tuner:
    settings = experiment.config.tune
    grid_keys = list(settings.grid)

    def name_trial(trial: Any) -> str:
        return trial_label(trial.config, grid_keys, trial.trial_id)

    return tune.Tuner(
        _trainable(experiment),
        param_space=_param_space(experiment),
        tune_config=tune.TuneConfig(
            metric=settings.metric,
            mode=settings.mode,
            num_samples=1,
            max_concurrent_trials=settings.max_concurrent_trials,
            trial_name_creator=name_trial,
            trial_dirname_creator=name_trial,
        ),
        run_config=_run_config(experiment, callbacks),
    )


def _run_config(experiment: Experiment, callbacks: list[tune.Callback]) -> tune.RunConfig:
    settings = experiment.config.tune
    keep = settings.checkpoint_num_to_keep
    return tune.RunConfig(
        name=experiment.config.name,
        storage_path=experiment.config.storage_path,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=keep,
            checkpoint_score_attribute=settings.metric if keep else None,
            checkpoint_score_order=settings.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        callbacks=callbacks,
        verbose=0,
    )


def _save_or_compare_config(experiment: Experiment) -> bool:
    """Save the resolved config; returns True when an earlier run of the same config exists."""
    saved_file = experiment.path / CONFIG_FILE
    resolved = experiment.resolved()
    if saved_file.exists():
        saved = yaml.safe_load(saved_file.read_text()) or {}
        changed = changed_keys(saved, resolved)
        if changed:
            raise ConfigError(
                f"experiment {experiment.path} was started with a different config (changed: "
                f"{', '.join(changed)}); rerun with the same config to resume, or pass --new "
                "(or another --name) to start a fresh experiment"
            )
        return tune.Tuner.can_restore(str(experiment.path))
    experiment.path.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(dump_yaml(resolved))
    return False


@dataclass(frozen=True)
class TrialSummary:
    """What a finished (or stopped, or failed) trial reported."""

    name: str
    epochs: int
    val_top1: float
    best_robustness: float
    best_epoch: int
    last_robustness: float
    checkpoint: str | None
    error: str | None


def summarise(results: tune.ResultGrid, metric: str, mode: str) -> list[TrialSummary]:
    summaries = []
    for index in range(len(results)):
        result = results[index]
        frame = result.metrics_dataframe
        rows = (
            [] if frame is None or metric not in frame else frame.dropna(subset=[metric]).to_dict("records")
        )
        pick = min if mode == "min" else max
        best = pick(rows, key=lambda r: r[metric]) if rows else {}
        last = rows[-1] if rows else {}
        error = error_line(result.error)
        summaries.append(
            TrialSummary(
                name=result.path.rsplit("/", 1)[-1],
                epochs=int(last.get("epoch", 0)),
                val_top1=float(last.get("val_top1", math.nan)),
                best_robustness=float(best.get(metric, math.nan)),
                best_epoch=int(best.get("epoch", 0)),
                last_robustness=float(last.get(metric, math.nan)),
                checkpoint=result.checkpoint.path if result.checkpoint else None,
                error=error,
            )
        )
    return summaries


def run_pretrain_search(
    experiment: Experiment, out: Callable[[str], None] = print_line
) -> list[TrialSummary]:
    """Run (or resume) the pretraining experiment; returns one summary per trial.

    Needs a Ray session (see :func:`search.runtime.ray_session`).
    """
    settings = experiment.config.tune
    shorten_user_errors()
    printer = EpochPrinter(score_metric_names(experiment.config.score), out)
    resuming = _save_or_compare_config(experiment)
    if resuming:
        out(f"resuming experiment {experiment.path}")
        tuner = tune.Tuner.restore(
            str(experiment.path),
            trainable=_trainable(experiment),
            resume_unfinished=True,
            resume_errored=True,
            param_space=_param_space(experiment),
        )
        # the printer was saved with the experiment (tuner.pkl) and comes back with it
    else:
        out(f"starting experiment {experiment.path} with {len(experiment.variants)} trial(s)")
        tuner = build_tuner(experiment, [printer])
    results = tuner.fit()
    return summarise(results, settings.metric, settings.mode)
