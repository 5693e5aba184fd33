"""A Tune scheduler that stops each trial once its score has peaked.

``PeakStoppingScheduler`` records, per trial, the reported ``metric`` at each
``epoch`` and asks the pure rule of :mod:`trainables.peak` (the same rule the
trainable uses to report its smoothed score and running best) whether to
stop. It is the only thing that stops trials: trainables report and
checkpoint every epoch and never break out of their loop because of the score.

Restore safety: Ray 2.60 rebuilds a scheduler in the state it had when the
Tuner was created (ray#30838). The histories therefore live in
:meth:`PeakStoppingScheduler.get_state`, kept in two places:

- :class:`SchedulerStateCallback` stores them with every Tune experiment
  snapshot and puts them back on ``Tuner.restore`` (any storage);
- with ``state_path`` the scheduler also writes them, atomically, after every
  result, and reads them back when it first meets a trial after a restore.
  This file is never behind the trials' restored checkpoints, even when the
  driver was killed between two snapshots or in the middle of one.

Holding more history than a restored trial is harmless: a trial resumed from
an older checkpoint reports those epochs again, and a replayed epoch replaces
the recorded one and everything after it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from trainables.peak import PeakRule, PeakState, assess
from trainables.records import atomic_write


class PeakStoppingScheduler(FIFOScheduler):
    """Stop a trial when the peak rule says its ``metric`` has peaked.

    Args:
        metric: the raw per-epoch score the rule watches (for example
            ``robustness``). If None, the metric of ``TuneConfig`` is used;
            if given, ``TuneConfig``'s metric (say ``robustness_best``) is left
            to searchers and to Ray's best-result logic.
        mode: ``min`` or ``max``; may also come from ``TuneConfig``.
        rule: smoothing, grace period, patience, min_delta and max_epochs of
            the rule (its own ``mode`` is replaced by this scheduler's).
        time_attr: the reported epoch counter (patience is counted in it).
        state_path: a local JSON file the histories are written to after every
            result and restored from (see the module docstring).
    """

    _supports_buffered_results = False  # decide on every single epoch

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        *,
        rule: PeakRule | None = None,
        time_attr: str = "epoch",
        state_path: str | None = None,
    ) -> None:
        if mode not in (None, "min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if rule is not None and not isinstance(rule, PeakRule):
            raise ValueError(f"rule must be a trainables.peak.PeakRule, got {type(rule).__name__}")
        super().__init__()
        self._metric, self._mode = metric, mode
        self._rule = rule or PeakRule()
        self._time_attr = time_attr
        self._state_path = state_path
        self._histories: dict[str, dict[int, float]] = {}
        self._states: dict[str, PeakState] = {}
        self._loaded = False  # the state file is read lazily: after a restore, this object is unpickled

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if mode and self._mode and mode != self._mode:
            return False  # conflicting directions: Tune reports the conflict
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._metric or not self._mode:
            raise ValueError(
                f"{type(self).__name__} needs a metric and a mode: pass them to the scheduler "
                "or to tune.TuneConfig(metric=..., mode=...)"
            )

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self._metric not in result or self._time_attr not in result:
            return TrialScheduler.CONTINUE
        state = self.record(trial.trial_id, int(result[self._time_attr]), float(result[self._metric]))
        return TrialScheduler.STOP if state.stop else TrialScheduler.CONTINUE

    def record(self, trial_id: str, epoch: int, value: float) -> PeakState:
        """Add one report (replacing any recorded at or after ``epoch``) and apply the rule."""
        self._load_state_file()
        history = self._histories.setdefault(trial_id, {})
        for replayed in [e for e in history if e >= epoch]:
            del history[replayed]
        history[epoch] = value
        rule = dataclasses.replace(self._rule, mode=self._mode or self._rule.mode)  # type: ignore[arg-type]
        state = assess(sorted(history.items()), rule)
        self._states[trial_id] = state
        self._write_state_file()
        return state

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._forget(trial.trial_id)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._forget(trial.trial_id)

    def _forget(self, trial_id: str) -> None:
        self._load_state_file()
        self._histories.pop(trial_id, None)
        self._states.pop(trial_id, None)
        self._write_state_file()

    def _load_state_file(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self._state_path and Path(self._state_path).exists():
            saved = json.loads(Path(self._state_path).read_text())
            merged = {**self.get_state()["histories"], **saved["histories"]}  # the file is never behind
            self.set_state({"histories": merged})

    def _write_state_file(self) -> None:
        if self._state_path:
            data = json.dumps(self.get_state()).encode()
            atomic_write(self._state_path, lambda stream: stream.write(data))

    def debug_string(self) -> str:
        peaks = ", ".join(
            f"{trial_id}: best {self._metric} {state.best:.4f} at epoch {state.peak_epoch}"
            for trial_id, state in sorted(self._states.items())
        )
        return f"PeakStoppingScheduler ({self._metric}, {self._mode}): {peaks or 'no results yet'}"

    def get_state(self) -> dict[str, Any]:
        """The per-trial histories (JSON-able)."""
        return {"histories": {t: {str(e): v for e, v in h.items()} for t, h in self._histories.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Replace the histories (from :meth:`get_state`); the state file, if newer, still wins."""
        self._histories = {
            trial_id: {int(epoch): float(value) for epoch, value in history.items()}
            for trial_id, history in state.get("histories", {}).items()
        }
        self._states = {}


class SchedulerStateCallback(tune.Callback):
    """Saves a scheduler's state with every experiment snapshot and restores it on ``Tuner.restore``."""

    def __init__(self, scheduler: PeakStoppingScheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"scheduler": self.scheduler.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["scheduler"])
