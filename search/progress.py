"""What the driver prints while a search runs and when it ends."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ray import tune

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def trial_label(config: Mapping[str, Any], grid_keys: list[str], trial_id: str) -> str:
    """A readable, filesystem-safe trial name: model, the grid values, and the trial id."""
    parts = [str(config.get("pretrain", {}).get("model", "trial"))]
    for key in grid_keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        parts.append(f"{key.split('.')[-1]}={node}")
    return _UNSAFE.sub("-", "_".join(parts + [trial_id]))[:120]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def epoch_line(name: str, result: Mapping[str, Any], total_epochs: int | None, score_keys: list[str]) -> str:
    """One line per trial and epoch: accuracy and robustness."""
    epoch = result.get("epoch", "?")
    total = f"/{total_epochs}" if total_epochs else ""
    scores = "  ".join(f"{key} {_fmt(result.get(key))}" for key in score_keys)
    return (
        f"{name}  epoch {epoch}{total}  train_loss {_fmt(result.get('train_loss'), 3)}  "
        f"val_top1 {_fmt(result.get('val_top1'), 3)}  {scores}"
    )


class EpochPrinter(tune.Callback):
    """Prints :func:`epoch_line` for every reported epoch of every trial (runs on the driver)."""

    def __init__(self, score_keys: list[str], out: Callable[[str], None] = print) -> None:
        self.score_keys, self.out = score_keys, out

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        total = trial.config.get("pretrain", {}).get("epochs")
        self.out(epoch_line(str(trial), result, total, self.score_keys))
