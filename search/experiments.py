"""The lifecycle of an experiment folder, shared by every stage's Tune experiment.

An experiment lives in ``<storage_path>/<name>`` with its resolved config
saved as ``medseg-config.yaml``. Running the same command again resumes it
(``Tuner.restore``: unfinished and errored trials continue from their last
checkpoints, finished ones are not re-run); running it with a changed config
is refused with the list of changed keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from search.config import CONFIG_FILE, changed_keys, dump_yaml
from search.progress import error_line, shorten_user_errors
from search.snapshots import repair_experiment_state
from trainables.errors import ConfigError


def save_or_compare(path: Path, resolved: Mapping[str, Any]) -> bool:
    """Save the resolved config in ``path``, or check it equals the saved one; True if one was saved.

    A different config is refused with the list of changed keys.
    """
    saved_file = path / CONFIG_FILE
    if saved_file.exists():
        saved = yaml.safe_load(saved_file.read_text()) or {}
        changed = changed_keys(saved, resolved)
        if changed:
            raise ConfigError(
                f"experiment {path} was started with a different config (changed: "
                f"{', '.join(changed)}); rerun with the same config to resume, or pass --new "
                "(or another --name) to start a fresh experiment"
            )
        return True
    path.mkdir(parents=True, exist_ok=True)
    saved_file.write_text(dump_yaml(resolved))
    return False


def prepare_folder(path: Path, resolved: Mapping[str, Any]) -> bool:
    """Save or compare the config of a Tune experiment folder; True when there is a run to resume."""
    if not save_or_compare(path, resolved):
        return False
    if tune.Tuner.can_restore(str(path)):
        return True
    _set_aside_unrestorable(path)
    return False


def unfinished_trials(path: Path) -> list[str]:
    """Trials of a Tune experiment that neither finished nor failed: after Ctrl+C, ``fit()`` returns
    as if the experiment had ended, and only this tells an interrupted one from a finished one."""
    analysis = tune.ExperimentAnalysis(str(path))
    return [str(t) for t in analysis.trials if t.status not in ("TERMINATED", "ERROR")]


def _set_aside_unrestorable(path: Path) -> None:
    """Move what a run that died before Tune's first snapshot left out of the way."""
    leftovers = [p for p in path.iterdir() if not p.name.startswith(".") and p.name != CONFIG_FILE]
    if leftovers:
        aside = path / f".unrestorable-{int(time.time())}"
        aside.mkdir()
        for item in leftovers:
            item.rename(aside / item.name)


def run_experiment(
    path: Path,
    resolved: Mapping[str, Any],
    *,
    trainable: Any,
    param_space: dict[str, Any],
    build_tuner: Callable[[], tune.Tuner],
    trials: int,
    out: Callable[[str], None],
) -> dict[str, str]:
    """Start or resume the experiment at ``path`` and run it to the end; the one-line errors of
    failed trials, by trial folder name. Needs a Ray session."""
    shorten_user_errors()
    if prepare_folder(path, resolved):
        out(f"resuming experiment {path}")
        repaired = repair_experiment_state(path)
        if repaired:
            out(f"the interruption cut off {', '.join(repaired)}; using the last good copy")
        # callbacks (the progress printer, the scheduler's state) come back with tuner.pkl
        tuner = tune.Tuner.restore(
            str(path),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
    else:
        out(f"starting experiment {path} with {trials} trial(s)")
        tuner = build_tuner()
    results = tuner.fit()
    errors = {}
    for index in range(len(results)):
        result = results[index]
        if result.error is not None:
            errors[Path(result.path).name] = error_line(result.error) or "error"
    return errors


DRIVER_CPU = 0.01


def with_trial_resources(trainable: Any, settings: Any) -> Any:
    """``trainable`` with a stage's per-trial resources (its ``tune`` section).

    A data-parallel trial only drives a TorchTrainer, whose workers ask for the
    CPUs, GPUs and custom resources themselves; Tune refuses an empty request,
    so the driving process holds a token share of a CPU.
    """
    if settings.workers_per_trial > 1:
        return tune.with_resources(trainable, {"cpu": DRIVER_CPU})
    return tune.with_resources(
        trainable,
        {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial, **settings.custom_resources},
    )
