"""Selecting checkpoints after a search: the peak of each trial, and the paper's baselines.

Selection reads what trials reported (each checkpoint folder's ``record.json``:
the metric history, the peak rule and its metric) and never recomputes the
score. The stop epoch, stop reason and peak epoch come from the same pure rule
the scheduler used (:func:`trainables.peak.first_stop`).

Stop reasons: ``peaked``, ``max_epochs``, ``score_nan`` (the rule's), and
``error`` (the trial failed) or ``unfinished`` (interrupted, or still running).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.checkpoints import STATE_FILE
from trainables.errors import MedsegError
from trainables.peak import PeakRule, first_stop
from trainables.records import RECORD_FILE, read_record

BASELINES = ("final", "best_accuracy")
MANIFEST_FILE = "selection.json"


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial reported, and what the peak rule makes of it."""

    trial_id: str
    trial_name: str
    trial_dir: Path
    encoder: str
    recipe: str
    metric: str
    mode: str
    epochs_trained: int
    stop_reason: str
    peak_epoch: int | None
    history: list[dict[str, Any]]
    checkpoints: dict[int, Path]
    keeps_best_accuracy: bool = False
    rule: dict[str, Any] = field(default_factory=dict)
    normalize: str = "imagenet"

    def row(self, epoch: int) -> dict[str, Any]:
        return next(r for r in self.history if int(r["epoch"]) == epoch)

    @property
    def peak_smoothed(self) -> float:
        if self.peak_epoch is None:
            return math.nan
        return float(self.row(self.peak_epoch).get(f"{self.metric}_smoothed", math.nan))


def _checkpoint_folders(trial_dir: Path) -> dict[int, Path]:
    folders = {}
    # a data-parallel trial's checkpoints live with its Train run, in train/
    for folder in [*trial_dir.glob("checkpoint_*"), *trial_dir.glob("train/checkpoint_*")]:
        if (folder / RECORD_FILE).exists():
            folders[int(read_record(folder)["epoch"])] = folder
    return folders


def read_outcome(trial_dir: Path) -> TrialOutcome | None:
    """The outcome of one trial folder, or None when it holds no checkpoint."""
    checkpoints = _checkpoint_folders(trial_dir)
    if not checkpoints:
        return None
    record = read_record(checkpoints[max(checkpoints)])
    history, metric = record["history"], record["metric"]
    if not any(metric in row for row in history):
        raise MedsegError(f"trial {trial_dir.name} never reported {metric!r}: nothing to select on")
    rule = PeakRule(**record["rule"])
    state = first_stop([(int(r["epoch"]), float(r.get(metric, math.nan))) for r in history], rule)
    if state.stop:
        reason = str(state.reason)
    else:
        reason = "error" if (trial_dir / "error.txt").exists() else "unfinished"
    config = record.get("config") or {}
    return TrialOutcome(
        trial_id=str(record.get("trial_id") or trial_dir.name),
        trial_name=str(record.get("trial_name") or trial_dir.name),
        trial_dir=trial_dir,
        encoder=str(record.get("encoder", "")),
        recipe=str(record.get("recipe", "")),
        metric=metric,
        mode=rule.mode,
        epochs_trained=int(history[-1]["epoch"]),
        stop_reason=reason,
        peak_epoch=state.peak_epoch,
        history=history,
        checkpoints=checkpoints,
        keeps_best_accuracy=bool(config.get("pretrain", {}).get("keep_best_accuracy", False)),
        rule=record["rule"],
        normalize=str(config.get("pretrain", {}).get("normalize", "imagenet")),
    )


def trial_outcomes(experiment_dir: str | Path) -> list[TrialOutcome]:
    """Every trial of an experiment that saved at least one checkpoint."""
    experiment_dir = Path(experiment_dir).resolve()
    if not experiment_dir.is_dir():
        raise MedsegError(f"experiment folder {experiment_dir} does not exist")
    outcomes = [read_outcome(d) for d in sorted(experiment_dir.iterdir()) if d.is_dir()]
    found = [o for o in outcomes if o is not None]
    if not found:
        raise MedsegError(f"experiment {experiment_dir} holds no checkpoints: run or resume its search first")
    return found


def _entry(
    outcome: TrialOutcome, kind: str, epoch: int, folder: Path, weights_key: str = "model"
) -> dict[str, Any]:
    row = outcome.row(epoch)
    metric = outcome.metric
    return {
        "kind": kind,
        "trial_id": outcome.trial_id,
        "trial_name": outcome.trial_name,
        "encoder": outcome.encoder,
        "recipe": outcome.recipe,
        "epoch": epoch,
        "metric": metric,
        "score": row.get(metric),
        "score_smoothed": row.get(f"{metric}_smoothed"),
        "val_top1": row.get("val_top1"),
        "epochs_trained": outcome.epochs_trained,
        "stop_reason": outcome.stop_reason,
        "checkpoint": str(folder / STATE_FILE),
        "weights_key": weights_key,
        "normalize": outcome.normalize,
    }


def _peak_entry(outcome: TrialOutcome) -> dict[str, Any]:
    epoch = outcome.peak_epoch
    if epoch is None:
        raise MedsegError(f"trial {outcome.trial_name} has no finite {outcome.metric}: no peak to select")
    if epoch not in outcome.checkpoints:
        raise MedsegError(
            f"the peak checkpoint (epoch {epoch}) of trial {outcome.trial_name} was not kept: "
            f"keep more with tune.checkpoint_num_to_keep (kept epochs: {sorted(outcome.checkpoints)})"
        )
    return _entry(outcome, "peak", epoch, outcome.checkpoints[epoch])


def _baseline_entry(outcome: TrialOutcome, kind: str) -> dict[str, Any]:
    latest = max(outcome.checkpoints)
    if kind == "final":
        return _entry(outcome, "final", latest, outcome.checkpoints[latest])
    rows = [r for r in outcome.history if math.isfinite(float(r.get("val_top1", math.nan)))]
    if not rows:
        raise MedsegError(f"trial {outcome.trial_name} reported no val_top1: no best-accuracy checkpoint")
    epoch = int(max(rows, key=lambda r: float(r["val_top1"]))["epoch"])  # earliest of ties
    if epoch in outcome.checkpoints:
        return _entry(outcome, "best_accuracy", epoch, outcome.checkpoints[epoch])
    if outcome.keeps_best_accuracy:
        return _entry(outcome, "best_accuracy", epoch, outcome.checkpoints[latest], "best_accuracy_model")
    raise MedsegError(
        f"the best-accuracy checkpoint (epoch {epoch}) of trial {outcome.trial_name} was not kept: "
        "run the search with pretrain.keep_best_accuracy=true"
    )


def select(
    experiment_dir: str | Path,
    *,
    top_k: int = 1,
    per_trial: bool = False,
    baselines: Sequence[str] = (),
) -> dict[str, Any]:
    """The selection manifest: the peak checkpoint of the best ``top_k`` trials (or of every
    trial with ``per_trial``), ranked by the smoothed score at the peak, plus baselines."""
    if top_k < 1:
        raise MedsegError(f"--top-k must be at least 1, got {top_k}")
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise MedsegError(f"unknown baseline(s) {unknown}; valid: {', '.join(BASELINES)}")
    outcomes = [o for o in trial_outcomes(experiment_dir) if o.peak_epoch is not None]
    if not outcomes:
        raise MedsegError(f"no trial of {experiment_dir} reported a finite score: nothing to select")
    sign = 1.0 if outcomes[0].mode == "min" else -1.0
    ranked = sorted(outcomes, key=lambda o: sign * o.peak_smoothed)
    chosen = ranked if per_trial else ranked[:top_k]
    selected = []
    for outcome in chosen:
        selected.append(_peak_entry(outcome))
        selected.extend(_baseline_entry(outcome, kind) for kind in baselines)
    return {
        "experiment": str(Path(experiment_dir).resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "metric": outcomes[0].metric,
        "mode": outcomes[0].mode,
        "rule": outcomes[0].rule,
        "selected": selected,
    }


def write_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def format_manifest(manifest: dict[str, Any]) -> str:
    """A plain-text table of the selected checkpoints."""
    lines = [f"{'kind':<14} {'epoch':>5} {'score':>8} {'smoothed':>8} {'top1':>6} {'stop':<10} trial"]
    for e in manifest["selected"]:
        lines.append(
            f"{e['kind']:<14} {e['epoch']:>5} {_num(e['score'])} {_num(e['score_smoothed'])} "
            f"{_num(e['val_top1'], 6, 3)} {e['stop_reason']:<10} {e['trial_name']}"
        )
    return "\n".join(lines)


def _num(value: Any, width: int = 8, digits: int = 4) -> str:
    return f"{'-':>{width}}" if value is None else f"{float(value):>{width}.{digits}f}"


def format_outcomes(outcomes: Sequence[TrialOutcome]) -> str:
    """One line per trial: epochs trained, why it stopped, and its peak."""
    lines = [f"{'trial':<44} {'epochs':>6} {'stop':<10} {'peak':>5} {'score':>8} {'smoothed':>8} {'top1':>6}"]
    for o in outcomes:
        row = o.row(o.peak_epoch) if o.peak_epoch is not None else {}
        lines.append(
            f"{o.trial_name[:44]:<44} {o.epochs_trained:>6} {o.stop_reason:<10} {o.peak_epoch or '-':>5} "
            f"{_num(row.get(o.metric))} {_num(row.get(f'{o.metric}_smoothed'))} "
            f"{_num(row.get('val_top1'), 6, 3)}"
        )
    return "\n".join(lines)
