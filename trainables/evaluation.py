"""Whole-case inference and metrics, for validation every epoch and for the final test.

A case's samples are predicted at the model's input size and the logits
resampled (bilinear) back to the sample's own size before the argmax, so
metrics are measured against the masks as stored, at full resolution. In
``crop`` mode (IDRiD) samples are predicted whole, padded to a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.data.samples import LoadedPart, to_input
from trainables.loops import Precision
from trainables.metrics import aggregate, case_metrics


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    precision: Precision,
    *,
    size: int,
    resize: str,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 16,
) -> np.ndarray:
    """Class indices (N x H x W) for N images in [0, 1] (N x H x W or N x H x W x 3)."""
    was_training = model.training
    model.eval()
    predictions = []
    try:
        for start in range(0, len(images), batch_size):
            batch = to_input(images[start : start + batch_size], mean, std)
            height, width = batch.shape[-2:]
            if resize == "resize":
                batch = nn.functional.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
            else:
                pad = (0, -width % 32, 0, -height % 32)
                batch = nn.functional.pad(
                    batch, pad, mode="reflect" if max(pad) < min(height, width) else "constant"
                )
            with precision.autocast():
                logits = model(precision.to_device(batch)).float()
            if resize == "resize":
                logits = nn.functional.interpolate(logits, size=(height, width), mode="bilinear")
            predictions.append(logits[..., :height, :width].argmax(dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(predictions)


def evaluate_parts(
    model: nn.Module,
    parts: list[LoadedPart],
    classes: Sequence[str],
    precision: Precision,
    *,
    size: int,
    resize: str,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 16,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-case metric rows (with ``case_id``) and their aggregate (with ``hd95_unit``)."""
    rows = []
    for part in parts:
        arrays = part.arrays
        assert arrays.masks is not None
        pred = predict(
            model,
            arrays.images,
            precision,
            size=size,
            resize=resize,
            mean=mean,
            std=std,
            batch_size=batch_size,
        )
        spacing = None
        if arrays.spacing is not None:  # arrays are slices x rows x columns
            rows_mm, columns_mm, slices_mm = arrays.spacing
            spacing = (slices_mm, rows_mm, columns_mm)
        rows.append({"case_id": part.case_id, **case_metrics(pred, arrays.masks, classes, spacing)})
    summary = aggregate(rows, classes)
    summary["hd95_unit"] = "mm" if all(p.arrays.spacing is not None for p in parts) else "pixels"
    return rows, summary
