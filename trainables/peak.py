"""The peak rule: when has a per-epoch score peaked? Pure (no Ray), used on both sides.

The trainable uses it to report the smoothed score, the running best and the
epochs since the last improvement (so Ray keeps checkpoints by the smoothed
score and searchers see the running best); the Tune scheduler
(:mod:`search.scheduler`) uses it to decide when to stop a trial; selection and
replay use it to name the stop reason. One implementation, four users.

Input
    The score history of one trial: (epoch, value) pairs in increasing epoch
    order, one per report (epochs may be sparse), and a mode: ``min`` (the
    paper's robustness score, lower is better) or ``max``.

Smoothing (online: each value depends only on reports up to it)
    ``none``; ``ema`` with factor ``alpha`` (s_t = alpha * x_t + (1 - alpha) * s_{t-1},
    s starting at the first value); ``mean``, the trailing mean of the last
    ``window`` reports.

When it stops, relative to the peak
    The peak is the epoch with the best smoothed score (the earliest one on
    ties); with smoothing ``none`` that is the best raw score. An improvement
    is a smoothed score better than the best before it by more than
    ``min_delta``. The rule says stop at the first report where

    - ``score_nan``: the score has been NaN for ``patience`` epochs, or
    - ``peaked``: the last improvement is ``patience`` or more epochs old, so
      the trial stops ``patience`` epochs (or the next report after them)
      after its last improvement,

    both only from epoch ``grace_period`` on; or where
    - ``max_epochs``: the epoch has reached ``max_epochs`` (the budget ends the
      trial whatever the grace period).

    Patience is counted in epochs, not reports.

NaN policy
    A NaN score never counts as an improvement and never enters the smoothing
    state: its smoothed value is NaN and the next finite value continues from
    the state before it. A trial whose score has been NaN for ``patience``
    epochs (since its last finite score, or since epoch 0) stops with reason
    ``score_nan``; its peak is the best finite epoch, if any.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as validated_dataclass

Mode = Literal["min", "max"]
STOP_REASONS = ("peaked", "max_epochs", "score_nan")


@validated_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class PeakRule:
    """Parameters of the rule; bad values raise a ValueError that names them.

    Defaults (reasoned for per-epoch scores of a 300-epoch ImageNet run, not
    tuned on the published curves): an EMA with alpha 0.3 averages out
    epoch-to-epoch noise over about three epochs; no stop during the paper's 20
    warm-up epochs, while the learning rate still rises and the representation
    moves fastest; patience 30 epochs, a tenth of the paper's budget.
    """

    mode: Mode = "min"
    smoothing: Literal["none", "ema", "mean"] = "ema"
    alpha: float = Field(default=0.3, gt=0, le=1)
    window: int = Field(default=5, ge=1)
    grace_period: int = Field(default=20, ge=0)
    patience: int = Field(default=30, ge=1)
    min_delta: float = Field(default=0.0, ge=0)
    max_epochs: int | None = Field(default=None, ge=1)


@dataclass(frozen=True)
class PeakState:
    """What the rule says after the last report of a history."""

    epoch: int
    smoothed: float
    best: float
    peak_epoch: int | None
    epochs_since_improvement: int
    stop: bool
    reason: str | None

    def as_metrics(self, metric: str) -> dict[str, float]:
        """The values a trainable reports beside ``metric`` (numbers only, for every logger)."""
        return {
            f"{metric}_smoothed": self.smoothed,
            f"{metric}_best": self.best,
            f"{metric}_peak_epoch": float(self.peak_epoch if self.peak_epoch is not None else math.nan),
            f"{metric}_epochs_since_best": float(self.epochs_since_improvement),
        }


def smooth(values: Sequence[float], rule: PeakRule) -> list[float]:
    """Online smoothing of ``values``; NaN in, NaN out, and NaNs leave the state alone."""
    smoothed: list[float] = []
    state: float | None = None
    recent: list[float] = []
    for value in values:
        if math.isnan(value):
            smoothed.append(math.nan)
            continue
        if rule.smoothing == "ema":
            state = value if state is None else rule.alpha * value + (1 - rule.alpha) * state
            smoothed.append(state)
        elif rule.smoothing == "mean":
            recent = (recent + [value])[-rule.window :]
            smoothed.append(sum(recent) / len(recent))
        else:
            smoothed.append(value)
    return smoothed


def _better(a: float, b: float, mode: str, margin: float = 0.0) -> bool:
    """Is ``a`` better than ``b`` by more than ``margin``? (NaN is never better; anything beats NaN.)"""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a < b - margin if mode == "min" else a > b + margin


def assess(history: Sequence[tuple[int, float]], rule: PeakRule) -> PeakState:
    """Apply the rule to a trial's whole history; the decision is for its last report."""
    if not history:
        raise ValueError("the peak rule needs at least one (epoch, value) report")
    epochs = [int(epoch) for epoch, _ in history]
    if any(b <= a for a, b in zip(epochs, epochs[1:], strict=False)):
        raise ValueError(f"epochs must increase strictly, got {epochs}")
    smoothed = smooth([float(value) for _, value in history], rule)
    best, peak_epoch = math.nan, None  # the exact best: the peak
    reference, improved_epoch = math.nan, 0  # the last improvement by more than min_delta
    finite_epoch = 0
    for epoch, value in zip(epochs, smoothed, strict=True):
        if math.isnan(value):
            continue
        finite_epoch = epoch
        if _better(value, best, rule.mode):
            best, peak_epoch = value, epoch
        if _better(value, reference, rule.mode, rule.min_delta):
            reference, improved_epoch = value, epoch
    epoch = epochs[-1]
    reason = _stop_reason(epoch, smoothed[-1], finite_epoch, improved_epoch, rule)
    return PeakState(
        epoch=epoch,
        smoothed=smoothed[-1],
        best=best,
        peak_epoch=peak_epoch,
        epochs_since_improvement=epoch - improved_epoch,
        stop=reason is not None,
        reason=reason,
    )


def _stop_reason(
    epoch: int, value: float, finite_epoch: int, improved_epoch: int, rule: PeakRule
) -> str | None:
    if epoch >= rule.grace_period:
        if math.isnan(value) and epoch - finite_epoch >= rule.patience:
            return "score_nan"
        if improved_epoch and epoch - improved_epoch >= rule.patience:
            return "peaked"
    if rule.max_epochs is not None and epoch >= rule.max_epochs:
        return "max_epochs"
    return None


def first_stop(history: Sequence[tuple[int, float]], rule: PeakRule) -> PeakState:
    """The state at the first report where the rule says stop, or after the last report."""
    for end in range(1, len(history) + 1):
        state = assess(history[:end], rule)
        if state.stop:
            return state
    return assess(history, rule)
