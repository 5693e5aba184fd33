"""``medseg-search report``: what a study found, in Markdown with plots.

Reads what the stages wrote (pretraining trial records, the selection
manifest, each downstream trial's ``test_metrics.json``) and writes
``report/report.md`` with: downstream Dice against the pretraining epoch and
against the score at that epoch, per encoder, recipe and mode; peak vs final
vs best-accuracy checkpoints; Spearman and Kendall correlations of the score
with test Dice; the pretraining epochs saved by stopping at the peak.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from search.plots import plot_points
from search.selection import trial_outcomes

REPORT_FOLDER = "report"


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _correlations(points: list[tuple[float, float]]) -> tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    if len(points) < 3 or len({p[0] for p in points}) < 2 or len({p[1] for p in points}) < 2:
        return math.nan, math.nan
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return float(spearmanr(xs, ys).statistic), float(kendalltau(xs, ys).statistic)


def load_results(downstream_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(downstream_dir.glob("*/test_metrics.json"))]


def build_report(pretrain_dir: Path, downstream_dir: Path, out_dir: Path) -> Path:
    """Write ``report.md`` and its plots into ``out_dir``; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = trial_outcomes(pretrain_dir)
    results = load_results(downstream_dir)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        source = result["source"]
        key = (
            source["encoder"],
            source.get("recipe") or "-",
            result["mode"],
            source["kind"],
            source.get("epoch"),
            source.get("score"),
            source.get("trial_id") or "",
        )
        groups[key].append(result)
    lines = [
        "# medseg-search report",
        "",
        f"Pretraining: `{pretrain_dir}`  ",
        f"Downstream: `{downstream_dir}`",
        "",
    ]
    lines += [
        "## Downstream Dice by checkpoint",
        "",
        "| encoder | recipe | mode | checkpoint | epoch | score | seeds | val Dice | test Dice | test HD95 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_epoch: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_score: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (encoder, recipe, mode, kind, epoch, score, _), members in sorted(groups.items(), key=str):
        test = _mean([float(m["test_dice_mean"]) for m in members])
        lines.append(
            f"| {encoder} | {recipe} | {mode} | {kind} | {_fmt(epoch)} | {_fmt(score)} | {len(members)} | "
            f"{_fmt(_mean([float(m['val_dice_mean']) for m in members]))} | {_fmt(test)} | "
            f"{_fmt(_mean([float(m['test_hd95_mean']) for m in members]), 2)} |"
        )
        if epoch is not None:
            by_epoch[f"{encoder} {recipe} {mode}"].append((float(epoch), test))
        if score is not None:
            by_score[f"{encoder} {recipe} {mode}"].append((float(score), test))
    units = sorted({str(r.get("test_hd95_unit")) for r in results})
    splits = sorted({str(r.get("split_mode")) for r in results})
    lines += ["", f"HD95 in {', '.join(units) or '-'}; split mode {', '.join(splits) or '-'}.", ""]
    plot_points(
        by_epoch,
        out_dir / "dice_vs_epoch.png",
        xlabel="pretraining epoch",
        ylabel="test Dice",
        title="Downstream test Dice against the pretraining epoch",
    )
    plot_points(
        by_score,
        out_dir / "dice_vs_score.png",
        xlabel="robustness score at that epoch (lower is better)",
        ylabel="test Dice",
        title="Downstream test Dice against the score",
    )
    lines += ["![Dice against epoch](dice_vs_epoch.png)", "", "![Dice against score](dice_vs_score.png)", ""]
    lines += _correlation_section(by_score) + _kinds_section(groups) + _savings_section(outcomes)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _correlation_section(by_score: dict[str, list[tuple[float, float]]]) -> list[str]:
    lines = [
        "## Score against test Dice",
        "",
        "Lower scores are more robust, so a useful score correlates negatively with Dice.",
        "",
        "| encoder, recipe, mode | points | Spearman | Kendall |",
        "| --- | --- | --- | --- |",
    ]
    every = [p for points in by_score.values() for p in points]
    for label, points in sorted({**by_score, "all": every}.items()):
        spearman, kendall = _correlations(points)
        lines.append(f"| {label} | {len(points)} | {_fmt(spearman, 3)} | {_fmt(kendall, 3)} |")
    return lines + ["", "(- where fewer than 3 distinct points exist)", ""]


def _kinds_section(groups: dict[tuple[Any, ...], list[dict[str, Any]]]) -> list[str]:
    table: dict[tuple[str, str, str, str], dict[str, float]] = defaultdict(dict)
    for (encoder, recipe, mode, kind, _, _, trial), members in groups.items():
        table[(encoder, recipe, mode, trial)][kind] = _mean([float(m["test_dice_mean"]) for m in members])
    kinds = ["peak", "final", "best_accuracy", "random_init"]
    lines = [
        "## Peak against final and best-accuracy checkpoints (test Dice)",
        "",
        "| encoder | recipe | mode | pretraining trial | " + " | ".join(kinds) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in kinds) + " |",
    ]
    for (encoder, recipe, mode, trial), dice in sorted(table.items()):
        lines.append(
            f"| {encoder} | {recipe} | {mode} | {trial or '-'} | "
            + " | ".join(_fmt(dice.get(k)) for k in kinds)
            + " |"
        )
    return lines + [""]


def _savings_section(outcomes: list[Any]) -> list[str]:
    lines = [
        "## Pretraining saved by stopping at the peak",
        "",
        "| pretraining trial | budget | trained | stop | peak epoch | saved |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    saved = []
    for outcome in outcomes:
        budget = int(outcome.rule.get("max_epochs") or outcome.epochs_trained)
        fraction = 1 - outcome.epochs_trained / budget if budget else 0.0
        saved.append(fraction)
        lines.append(
            f"| {outcome.trial_name} | {budget} | {outcome.epochs_trained} | {outcome.stop_reason} | "
            f"{_fmt(outcome.peak_epoch)} | {fraction:.1%} |"
        )
    lines += ["", f"Mean share of the pretraining budget saved: {_mean(saved):.1%}.", ""]
    return lines
