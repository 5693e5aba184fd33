"""What the driver prints while a search runs and when it ends."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from ray import tune

from trainables.errors import MedsegError
from trainables.settings import UNSET

_UNSAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def trial_label(config: Mapping[str, Any], grid_keys: list[str], trial_id: str) -> str:
    """A readable, filesystem-safe trial name: model, the grid values, and the trial id."""
    parts = [str(config.get("pretrain", {}).get("model", "trial"))]
    for key in grid_keys:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None or node == UNSET:
            continue  # a conditional key that does not apply to this trial
        parts.append(f"{key.split('.')[-1]}={f'{node:.4g}' if isinstance(node, float) else node}")
    return _UNSAFE.sub("-", "_".join(parts + [trial_id]))[:120]


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


def epoch_line(
    name: str, result: Mapping[str, Any], total_epochs: int | None, score_keys: list[str], peak_metric: str
) -> str:
    """One line per trial and epoch: accuracy, robustness, and the peak rule's view of its metric."""
    epoch = result.get("epoch", "?")
    total = f"/{total_epochs}" if total_epochs else ""
    scores = "  ".join(f"{key} {_fmt(result.get(key))}" for key in score_keys)
    smoothed, best = result.get(f"{peak_metric}_smoothed"), result.get(f"{peak_metric}_best")
    if smoothed is not None:
        peak = result.get(f"{peak_metric}_peak_epoch")
        scores += f"  {peak_metric} smoothed {_fmt(smoothed)}, best {_fmt(best)} at epoch {_fmt(peak, 0)}"
    return (
        f"{name}  epoch {epoch}{total}  train_loss {_fmt(result.get('train_loss'), 3)}  "
        f"val_top1 {_fmt(result.get('val_top1'), 3)}  {scores}"
    )


def print_line(line: str) -> None:
    """The default output: stdout, flushed (a module function, so callbacks holding it pickle)."""
    print(line, flush=True)


class EpochPrinter(tune.Callback):
    """Prints :func:`epoch_line` for every reported epoch of every trial (runs on the driver)."""

    def __init__(
        self, score_keys: list[str], peak_metric: str, out: Callable[[str], None] = print_line
    ) -> None:
        self.score_keys, self.peak_metric, self.out = score_keys, peak_metric, out

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        total = trial.config.get("pretrain", {}).get("epochs")
        self.out(epoch_line(str(trial), result, total, self.score_keys, self.peak_metric))


def error_line(error: BaseException | None) -> str | None:
    """One line for a trial's error: the user's message for a MedsegError, else the exception's last line."""
    if error is None:
        return None
    cause = getattr(error, "cause", None)
    if isinstance(cause, MedsegError):
        return f"{type(cause).__name__}: {cause}"
    lines = str(error).strip().splitlines()
    return lines[-1] if lines else type(error).__name__


class UserErrorsOnOneLine(logging.Filter):
    """Shortens Tune's "Trial task failed" log to one line when the cause is the user's to fix.

    Bugs (any other exception) keep their full traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, MedsegError):
            record.msg = f"{record.getMessage()}: {error_line(error)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def shorten_user_errors() -> None:
    """Install :class:`UserErrorsOnOneLine` on Tune's controller logger (idempotent)."""
    logger = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, UserErrorsOnOneLine) for f in logger.filters):
        logger.addFilter(UserErrorsOnOneLine())
