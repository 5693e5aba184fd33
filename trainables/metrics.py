"""Segmentation metrics: Dice, IoU and HD95 per case, then averaged over cases.

Definitions
    Every metric is computed per case (a 2D image, or all slices of a volume
    stacked into 3D) and per foreground class (class 0, the background, is
    left out), then averaged over cases: ``dice_<class>`` is the mean over
    cases of that class's Dice, and ``dice_mean`` the mean of ``dice_<class>``
    over the foreground classes. The same for ``iou_*`` and ``hd95_*``.

The empty-class rule
    A class absent from both the prediction and the truth of a case has no
    Dice or IoU there (a perfect but uninformative agreement): that case is
    left out of the class's mean and counted in ``excluded_<class>``. A class
    present in exactly one of them scores Dice 0 and IoU 0. HD95 needs the
    class in both; otherwise it is left out and counted in
    ``hd95_undefined_<class>``.

HD95
    The 95th percentile of the symmetric surface distances (MONAI's
    ``compute_hausdorff_distance``), in millimetres where the voxel spacing is
    known (NIfTI volumes) and in pixels otherwise; ``hd95_unit`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def _overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    intersection = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    if total == 0:
        return math.nan, math.nan
    return 2 * intersection / total, intersection / (total - intersection)


def _hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None) -> float:
    if not pred.any() or not truth.any():
        return math.nan
    from monai.metrics import compute_hausdorff_distance

    as_tensor = [torch.from_numpy(np.ascontiguousarray(a))[None, None] for a in (pred, truth)]
    distance = compute_hausdorff_distance(
        as_tensor[0],
        as_tensor[1],
        include_background=True,
        percentile=95,
        spacing=list(spacing) if spacing is not None else None,
    )
    return float(distance.reshape(-1)[0])


def case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    classes: Sequence[str],
    spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Dice, IoU and HD95 of one case per foreground class (NaN where undefined, see the module docstring).

    ``pred`` and ``truth`` are class-index arrays of the same shape (H x W, or
    N x H x W for a volume); ``spacing`` is per axis of that array, in mm.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if pred.shape[0] == 1 and spacing is None:
        pred, truth = pred[0], truth[0]  # one 2D image
    row: dict[str, float] = {}
    for index, name in enumerate(classes):
        if index == 0:
            continue
        p, t = pred == index, truth == index
        row[f"dice_{name}"], row[f"iou_{name}"] = _overlap(p, t)
        row[f"hd95_{name}"] = _hd95(p, t, spacing)
    return row


def aggregate(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Means over cases per class and over classes, with the counts the empty-class rule left out."""
    summary: dict[str, Any] = {}
    for metric in ("dice", "iou", "hd95"):
        class_means = []
        for name in classes[1:]:
            values = [r[f"{metric}_{name}"] for r in rows]
            finite = [v for v in values if not math.isnan(v)]
            mean = sum(finite) / len(finite) if finite else math.nan
            summary[f"{metric}_{name}"] = mean
            if metric == "dice":
                summary[f"excluded_{name}"] = len(values) - len(finite)
            if metric == "hd95":
                summary[f"hd95_undefined_{name}"] = len(values) - len(finite)
            if not math.isnan(mean):
                class_means.append(mean)
        summary[f"{metric}_mean"] = sum(class_means) / len(class_means) if class_means else math.nan
    return summary
