"""The pure peak rule, as a table of histories -> stop epoch, peak epoch and reason."""

from __future__ import annotations

import math

import pytest

from trainables.peak import PeakRule, assess, first_stop, smooth

NAN = math.nan


def _series(*values: float, start: int = 1) -> list[tuple[int, float]]:
    return [(start + i, v) for i, v in enumerate(values)]


# (name, history, rule keywords, expected stop epoch or None, expected peak epoch, expected reason)
TABLE = [
    (
        "rising score in min mode: peak first",
        _series(0.3, 0.35, 0.4, 0.45, 0.5),
        {"patience": 2},
        3,
        1,
        "peaked",
    ),
    (
        "falling score runs to max_epochs",
        [(e, 1 / e) for e in range(1, 7)],
        {"patience": 2, "max_epochs": 6},
        6,
        6,
        "max_epochs",
    ),
    (
        "plateau: the earliest epoch of the plateau is the peak",
        _series(0.5, 0.4, 0.4, 0.4, 0.4),
        {"patience": 2},
        4,
        2,
        "peaked",
    ),
    (
        "a tie with the best is no improvement",
        _series(0.5, 0.3, 0.4, 0.3, 0.4, 0.5),
        {"patience": 3},
        5,
        2,
        "peaked",
    ),
    (
        "noisy second peak missed with short patience",
        _series(0.5, 0.4, 0.45, 0.5, 0.2),
        {"patience": 2},
        4,
        2,
        "peaked",
    ),
    (
        "noisy second peak reached with longer patience",
        _series(0.5, 0.4, 0.45, 0.5, 0.2),
        {"patience": 3},
        None,
        5,
        None,
    ),
    (
        "a lucky dip stops a raw trial",
        _series(0.5, 0.2, 0.45, 0.4, 0.35, 0.32),
        {"patience": 4},
        6,
        2,
        "peaked",
    ),
    (
        "EMA smoothing sees through the lucky dip",
        _series(0.5, 0.2, 0.45, 0.4, 0.35, 0.32),
        {"patience": 4, "smoothing": "ema", "alpha": 0.5},
        None,
        6,
        None,
    ),
    (
        "trailing mean over 2 reports",
        _series(0.5, 0.2, 0.45, 0.4, 0.35, 0.32),
        {"patience": 4, "smoothing": "mean", "window": 2},
        None,
        3,
        None,
    ),
    (
        "sparse epochs: patience counts epochs, not reports",
        [(1, 0.5), (5, 0.4), (20, 0.3), (50, 0.35), (100, 0.2)],
        {"patience": 10},
        50,
        20,
        "peaked",
    ),
    (
        "sparse epochs within patience go on",
        [(1, 0.5), (5, 0.4), (20, 0.3), (25, 0.35), (28, 0.2)],
        {"patience": 10},
        None,
        28,
        None,
    ),
    ("NaN for patience epochs", _series(0.5, NAN, NAN, NAN), {"patience": 3}, 4, 1, "score_nan"),
    ("NaN from the start", _series(NAN, NAN), {"patience": 2}, 2, None, "score_nan"),
    ("NaN never counts as an improvement", _series(0.5, NAN, 0.6, 0.7), {"patience": 3}, 4, 1, "peaked"),
    (
        "no stop inside the grace period",
        _series(0.3, 0.4, 0.5, 0.6, 0.7),
        {"patience": 1, "grace_period": 5},
        5,
        1,
        "peaked",
    ),
    (
        "the budget ends a trial inside the grace period",
        _series(0.3, 0.4, 0.5),
        {"patience": 1, "grace_period": 10, "max_epochs": 3},
        3,
        1,
        "max_epochs",
    ),
    ("max mode (accuracy)", _series(0.1, 0.5, 0.4, 0.3), {"patience": 2, "mode": "max"}, 4, 2, "peaked"),
    ("max mode keeps improving", _series(0.1, 0.2, 0.3, 0.4), {"patience": 2, "mode": "max"}, None, 4, None),
    (
        "min_delta: small gains are not improvements, but the peak is the exact best",
        _series(0.5, 0.495, 0.49, 0.489, 0.488),
        {"patience": 3, "min_delta": 0.02},
        4,
        4,
        "peaked",
    ),
]


@pytest.mark.parametrize(
    ("name", "history", "rule", "stop", "peak", "reason"), TABLE, ids=[row[0] for row in TABLE]
)
def test_peak_rule_table(name, history, rule, stop, peak, reason) -> None:
    state = first_stop(history, PeakRule(**{"smoothing": "none", "grace_period": 0, **rule}))
    assert (state.epoch if state.stop else None, state.peak_epoch, state.reason) == (stop, peak, reason)


def test_smoothing_is_online_and_skips_nan() -> None:
    values = [1.0, 3.0, NAN, 5.0]
    ema = smooth(values, PeakRule(smoothing="ema", alpha=0.5))
    assert ema[:2] == [1.0, 2.0] and math.isnan(ema[2]) and ema[3] == 3.5
    mean = smooth(values, PeakRule(smoothing="mean", window=2))
    assert mean[:2] == [1.0, 2.0] and math.isnan(mean[2]) and mean[3] == 4.0
    # online: appending a report never changes the earlier smoothed values
    assert smooth(values + [100.0], PeakRule(smoothing="ema", alpha=0.5))[:4][:2] == ema[:2]


def test_state_reports_running_best_and_epochs_since_it() -> None:
    state = assess(_series(0.5, 0.4, 0.45, 0.47), PeakRule(smoothing="none", grace_period=0, patience=5))
    assert not state.stop
    assert state.as_metrics("robustness") == {
        "robustness_smoothed": 0.47,
        "robustness_best": 0.4,
        "robustness_peak_epoch": 2.0,
        "robustness_epochs_since_best": 2.0,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": 0},
        {"alpha": 1.5},
        {"patience": 0},
        {"mode": "up"},
        {"smoothing": "gaussian"},
        {"window": 0},
        {"min_delta": -1},
        {"grace_period": -1},
        {"max_epochs": 0},
        {"patiense": 3},
    ],
)
def test_rule_rejects_bad_parameters_naming_them(bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        PeakRule(**bad)


def test_epochs_must_increase() -> None:
    with pytest.raises(ValueError, match="increase"):
        assess([(2, 0.1), (2, 0.2)], PeakRule())
