"""Plots written beside the results (PNG, with matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.selection import TrialOutcome


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_score_curve(outcome: TrialOutcome, path: Path) -> Path:
    """A pretraining trial: score (raw and smoothed) and ImageNet top-1 per epoch, the peak and the stop."""
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in outcome.history]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(epochs, [r.get(outcome.metric) for r in outcome.history], "o-", label=f"{outcome.metric} (raw)")
    axis.plot(epochs, [r.get(f"{outcome.metric}_smoothed") for r in outcome.history], "--", label="smoothed")
    if outcome.peak_epoch is not None:
        axis.axvline(outcome.peak_epoch, color="green", label=f"peak: epoch {outcome.peak_epoch}")
    axis.axvline(outcome.epochs_trained, color="red", linestyle=":", label=f"stop ({outcome.stop_reason})")
    axis.set_xlabel("pretraining epoch")
    axis.set_ylabel(outcome.metric + (" (lower is better)" if outcome.mode == "min" else ""))
    accuracy = [r.get("val_top1") for r in outcome.history]
    handles, labels = axis.get_legend_handles_labels()
    if any(a is not None for a in accuracy):
        twin = axis.twinx()
        twin.plot(epochs, accuracy, "s-", color="grey", alpha=0.6, label="val top-1")
        twin.set_ylabel("val top-1")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axis.legend(handles, labels, fontsize=6, loc="best")
    axis.set_title(outcome.trial_name, fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_points(
    groups: Mapping[str, Sequence[tuple[float, float]]], path: Path, *, xlabel: str, ylabel: str, title: str
) -> Path:
    """One scatter series per group (points joined in x order)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, points in sorted(groups.items()):
        ordered = sorted(points)
        axis.plot([p[0] for p in ordered], [p[1] for p in ordered], "o-", label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    if groups:
        axis.legend(fontsize=6, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_overlay(image: Any, truth: Any, prediction: Any, path: Path, title: str) -> Path:
    """Image, true mask and predicted mask side by side."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(7.5, 2.8))
    for axis, (name, data) in zip(
        axes, (("image", image), ("truth", truth), ("prediction", prediction)), strict=True
    ):
        axis.imshow(data, cmap="gray" if name == "image" else "viridis", interpolation="nearest")
        axis.set_title(name, fontsize=8)
        axis.axis("off")
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
