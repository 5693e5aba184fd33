"""Segmentation metrics on masks made for the purpose, including the empty-class rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainables.metrics import aggregate, case_metrics

CLASSES = ["background", "a", "b"]


def _mask(shape, *boxes):
    mask = np.zeros(shape, np.int64)
    for label, (rows, cols) in boxes:
        mask[..., rows, cols] = label
    return mask


def test_dice_and_iou_by_hand_for_a_2d_case() -> None:
    truth = _mask((1, 10, 10), (1, (slice(2, 6), slice(2, 6))))  # 16 pixels of class a
    pred = _mask((1, 10, 10), (1, (slice(3, 7), slice(2, 6))))  # shifted by one row: 12 overlap
    row = case_metrics(pred, truth, CLASSES)
    assert row["dice_a"] == pytest.approx(2 * 12 / 32) and row["iou_a"] == pytest.approx(12 / 20)
    assert row["hd95_a"] == pytest.approx(1.0)  # pixels


def test_a_class_absent_from_both_is_left_out_and_counted_but_one_sided_absence_scores_zero() -> None:
    truth = _mask((1, 8, 8), (1, (slice(0, 2), slice(0, 2))))
    pred = _mask((1, 8, 8), (1, (slice(0, 2), slice(0, 2))), (2, (slice(5, 7), slice(5, 7))))
    both_empty = case_metrics(truth, truth, CLASSES)  # class b in neither
    false_positive = case_metrics(pred, truth, CLASSES)  # class b only in the prediction
    assert math.isnan(both_empty["dice_b"]) and math.isnan(both_empty["iou_b"])
    assert false_positive["dice_b"] == 0.0 and false_positive["iou_b"] == 0.0
    assert math.isnan(false_positive["hd95_b"])  # undefined with one side empty
    summary = aggregate([both_empty, false_positive], CLASSES)
    assert summary["dice_a"] == 1.0
    assert summary["dice_b"] == 0.0 and summary["excluded_b"] == 1  # the both-empty case left out
    assert summary["dice_mean"] == pytest.approx(0.5)  # mean over foreground classes
    assert summary["hd95_undefined_b"] == 2


def test_volumes_are_scored_in_3d_and_hd95_uses_the_spacing_in_mm() -> None:
    truth = np.zeros((4, 12, 12), np.int64)
    truth[1:3, 3:8, 3:8] = 1
    pred = truth.copy()
    pred[1:3, 3:8, 8] = 1  # one extra column
    in_pixels = case_metrics(pred, truth, ["background", "a"], spacing=(1.0, 1.0, 1.0))
    in_mm = case_metrics(pred, truth, ["background", "a"], spacing=(3.0, 2.0, 0.5))  # slices, rows, columns
    assert in_pixels["dice_a"] == in_mm["dice_a"] == pytest.approx(2 * 50 / 110)
    assert in_pixels["hd95_a"] == pytest.approx(1.0) and in_mm["hd95_a"] == pytest.approx(0.5)


def test_a_class_missing_from_every_case_does_not_enter_the_mean() -> None:
    rows = [
        case_metrics(
            _mask((1, 6, 6), (1, (slice(0, 3), slice(0, 3)))),
            _mask((1, 6, 6), (1, (slice(0, 3), slice(0, 3)))),
            CLASSES,
        )
    ]
    summary = aggregate(rows, CLASSES)
    assert math.isnan(summary["dice_b"]) and summary["dice_mean"] == 1.0
