"""A Ray Tune trainable that replays a recorded score curve, for judging stopping rules.

Config:
    ``curves``: a list of curves, each ``{"epochs": [...], "values": [...],
    "labels": {...}}`` (labels such as encoder, recipe, dataset are copied into
    the checkpoint records); ``curve_index``: which curve this trial replays
    (a grid, or a searched integer); ``metric``: the name the values are
    reported under; ``peak``: the peak rule's parameters.

Each published epoch is reported like a pretraining epoch: the value, the peak
rule's smoothed score and running best, and a checkpoint folder holding the
same ``record.json`` a pretraining trial writes (no weights), so the
scheduler, the checkpoint keeping and ``medseg-search select`` treat replayed
and real trials alike. A restored trial continues after its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from trainables import tune_bridge
from trainables.peak import PeakRule, assess
from trainables.records import read_record, write_record


def replay_trainable(config: dict[str, Any]) -> None:
    """Report ``metric`` at every epoch of the chosen curve, with a record checkpoint each time."""
    curve = config["curves"][int(config["curve_index"])]
    metric, rule = config.get("metric", "robustness"), PeakRule(**config.get("peak", {}))
    record = {
        **tune_bridge.trial_labels(),
        **curve.get("labels", {}),
        "metric": metric,
        "rule": dataclasses.asdict(rule),
    }
    restored = tune_bridge.restore(read_record)
    history: list[dict[str, Any]] = restored["history"] if restored else []
    done = {int(row["epoch"]) for row in history}
    for epoch, value in zip(curve["epochs"], curve["values"], strict=True):
        if int(epoch) in done:
            continue
        row: dict[str, Any] = {"epoch": int(epoch), metric: float(value)}
        row.update(assess([(r["epoch"], r[metric]) for r in [*history, row]], rule).as_metrics(metric))
        history.append(row)
        with tempfile.TemporaryDirectory(prefix="medseg-replay-") as folder:
            write_record(folder, {"epoch": int(epoch), **record, "history": history})
            tune_bridge.report(row, Path(folder))
