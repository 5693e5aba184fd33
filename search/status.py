"""``medseg-search status``: where an experiment or a pipeline stands."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ray import tune

from trainables.errors import MedsegError


def describe_experiment(path: Path) -> list[str]:
    """Trials by state, the best so far, and whether the Tune experiment can be resumed."""
    if not tune.Tuner.can_restore(str(path)):
        return [f"{path.name}: not started (nothing to resume)"]
    trials = tune.ExperimentAnalysis(str(path)).trials
    states = Counter(t.status for t in trials)
    lines = [
        f"{path.name}: {len(trials)} trial(s): "
        + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    ]
    best = _best(path)
    if best:
        lines.append(f"  best so far: {best}")
    unfinished = sum(n for s, n in states.items() if s not in ("TERMINATED", "ERROR"))
    lines.append(f"  {'resumable: rerun the same command' if unfinished else 'finished'}")
    return lines


def _best(path: Path) -> str | None:
    tested = [json.loads(p.read_text()) for p in path.glob("*/test_metrics.json")]
    if tested:
        top = max(tested, key=lambda r: r.get("test_dice_mean", -math.inf))
        return f"test dice_mean {top['test_dice_mean']:.4f} ({top['trial']})"
    histories = [json.loads(p.read_text()) for p in path.glob("*/history.json")]
    rows = [(row.get("dice_mean", math.nan), h.get("trial_name")) for h in histories for row in h["history"]]
    rows = [r for r in rows if not math.isnan(r[0])]
    if rows:
        dice, trial = max(rows)
        return f"val dice_mean {dice:.4f} ({trial})"
    from search.selection import trial_outcomes

    try:
        outcomes = [o for o in trial_outcomes(path) if o.peak_epoch is not None]
    except MedsegError:
        return None
    if not outcomes:
        return None
    sign = 1 if outcomes[0].mode == "min" else -1
    top_outcome = min(outcomes, key=lambda o: sign * o.peak_smoothed)
    return (
        f"{top_outcome.metric} {top_outcome.peak_smoothed:.4f} (smoothed) at epoch {top_outcome.peak_epoch} "
        f"of {top_outcome.trial_name}, {top_outcome.stop_reason}"
    )


def describe(path: str | Path) -> str:
    """A pipeline's stages and their experiments, or one experiment."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise MedsegError(f"experiment folder {path} does not exist")
    from search.pipeline import STAGES, STATE_FILE

    if not (path / STATE_FILE).exists():
        return "\n".join(describe_experiment(path))
    stages = json.loads((path / STATE_FILE).read_text())["stages"]
    lines = [f"pipeline {path.name}"]
    for stage in STAGES:
        info = stages.get(stage, {"status": "pending", "attempts": 0})
        lines.append(f"stage {stage}: {info['status']} (attempts: {info.get('attempts', 0)})")
        if stage in ("pretrain", "downstream") and (path / stage).is_dir():
            lines += ["  " + line for line in describe_experiment(path / stage)]
    pending = [s for s in STAGES if stages.get(s, {}).get("status") != "done"]
    lines.append(f"{'resume with: medseg-search resume ' + str(path) if pending else 'all stages done'}")
    return "\n".join(lines)
