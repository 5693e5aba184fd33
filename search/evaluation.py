"""``medseg-search evaluate``: test the best checkpoint of every downstream trial, once.

For each trial folder, the kept checkpoint with the best validation
``dice_mean`` (from the trial's own ``history.json`` and checkpoint records;
trials that were stopped or interrupted included) is evaluated on the test
split, which nothing else touches. Per trial it writes ``test_metrics.json``
(``test_dice_mean``, ``test_dice_<class>``, ``test_iou_*``, ``test_hd95_mean``
and its unit, the split mode, the checkpoint) and ``test_cases.csv`` (one row
per case). Idempotent: a trial already tested on the same checkpoint is
skipped, so the command is safe to run again.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter

from search.progress import print_line
from trainables.data.samples import LoadedPart, input_statistics, load_split
from trainables.errors import MedsegError
from trainables.evaluation import evaluate_parts, predict
from trainables.finetune_settings import FinetuneTrial, SegmentationData
from trainables.finetuning import HISTORY_FILE, trial_splits
from trainables.loops import Precision
from trainables.models import create_unet
from trainables.records import RECORD_FILE, atomic_write, read_record
from trainables.settings import NORMALIZATIONS

TEST_METRICS_FILE = "test_metrics.json"
TEST_CASES_FILE = "test_cases.csv"


@dataclass(frozen=True)
class BestCheckpoint:
    """The checkpoint of a trial that evaluation tests."""

    trial_dir: Path
    folder: Path
    epoch: int
    val_dice_mean: float
    record: dict[str, Any]


def best_checkpoint(trial_dir: Path) -> BestCheckpoint | None:
    """The kept checkpoint with the best validation dice_mean (None: the trial saved none)."""
    folders = {
        int(read_record(f.parent)["epoch"]): f.parent
        for f in trial_dir.glob(f"**/checkpoint_*/{RECORD_FILE}")
    }
    if not folders:
        return None
    latest = read_record(folders[max(folders)])
    history_file = trial_dir / HISTORY_FILE
    history = json.loads(history_file.read_text())["history"] if history_file.exists() else latest["history"]
    dice = {int(r["epoch"]): float(r.get("dice_mean", math.nan)) for r in history}
    epoch = max(folders, key=lambda e: (-math.inf if math.isnan(dice.get(e, math.nan)) else dice[e], -e))
    return BestCheckpoint(
        trial_dir, folders[epoch], epoch, dice.get(epoch, math.nan), read_record(folders[epoch])
    )


def _already_tested(trial_dir: Path, folder: Path) -> dict[str, Any] | None:
    path = trial_dir / TEST_METRICS_FILE
    if not path.exists():
        return None
    tested: dict[str, Any] = json.loads(path.read_text())
    return tested if tested.get("checkpoint") == str(folder) else None


class _TestSets:
    """Test splits loaded once per data config (every trial of a set shares one)."""

    def __init__(self) -> None:
        self._cache: dict[str, list[LoadedPart]] = {}

    def get(self, trial: FinetuneTrial) -> list[LoadedPart]:
        key = json.dumps(TypeAdapter(SegmentationData).dump_python(trial.data, mode="json"), sort_keys=True)
        if key not in self._cache:
            self._cache[key] = load_split(
                trial_splits(trial).test, split="test", evaluation=True, source=trial.data.root
            )
        return self._cache[key]


def test_trial(best: BestCheckpoint, test_sets: _TestSets, precision: Precision) -> dict[str, Any]:
    """Evaluate one trial's best checkpoint on the test split and write its files."""
    trial = FinetuneTrial.from_mapping(best.record["config"], f"{best.folder / RECORD_FILE}")
    parts = test_sets.get(trial)
    channels = parts[0].arrays.channels
    model = create_unet(trial.source.encoder, len(trial.data.class_names), channels)
    state = torch.load(best.folder / "state.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    mean, std = input_statistics(NORMALIZATIONS[trial.source.normalize], channels)
    rows, summary = evaluate_parts(
        precision.prepare(model),
        parts,
        trial.data.class_names,
        precision,
        size=trial.data.image_size,
        resize=trial.data.resize,
        mean=mean,
        std=std,
        batch_size=trial.finetune.eval_batch_size,
    )
    metrics = {
        "trial": best.trial_dir.name,
        "checkpoint": str(best.folder),
        "epoch": best.epoch,
        "val_dice_mean": best.val_dice_mean,
        "split_mode": trial.data.split.mode,
        "mode": trial.mode,
        "seed": trial.finetune.seed,
        "source": best.record["config"]["source"],
        **{f"test_{k}": v for k, v in summary.items()},
    }
    save_overlays(model, parts, best.trial_dir / "overlays", precision, trial, mean, std)
    payload = json.dumps(metrics, indent=2).encode()
    atomic_write(best.trial_dir / TEST_METRICS_FILE, lambda stream: stream.write(payload))
    with open(best.trial_dir / TEST_CASES_FILE, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) + ["split_mode"])
        writer.writeheader()
        writer.writerows({**row, "split_mode": trial.data.split.mode} for row in rows)
    return metrics


def save_overlays(
    model: torch.nn.Module,
    parts: list[LoadedPart],
    folder: Path,
    precision: Precision,
    trial: FinetuneTrial,
    mean: list[float],
    std: list[float],
    count: int = 3,
) -> None:
    """Image, truth and prediction of the middle sample of the first ``count`` test cases, as PNGs."""
    from search.plots import save_overlay

    for part in parts[:count]:
        middle = len(part.arrays.images) // 2
        image = part.arrays.images[middle : middle + 1]
        prediction = predict(
            model, image, precision, size=trial.data.image_size, resize=trial.data.resize, mean=mean, std=std
        )
        assert part.arrays.masks is not None
        name = part.case_id.replace("/", "_")
        save_overlay(
            image[0],
            part.arrays.masks[middle],
            prediction[0],
            folder / f"{name}.png",
            f"{part.case_id}, sample {middle}",
        )


def evaluate_experiment(
    experiment_dir: str | Path,
    *,
    force: bool = False,
    device: str = "auto",
    out: Callable[[str], None] = print_line,
) -> list[dict[str, Any]]:
    """Test the best checkpoint of every trial (see the module docstring); one metrics dict per trial."""
    experiment_dir = Path(experiment_dir).resolve()
    if not experiment_dir.is_dir():
        raise MedsegError(f"experiment folder {experiment_dir} does not exist")
    trials = [d for d in sorted(experiment_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    bests = [b for b in (best_checkpoint(d) for d in trials) if b is not None]
    if not bests:
        raise MedsegError(
            f"experiment {experiment_dir} holds no downstream checkpoints: run medseg-search downstream first"
        )
    precision = Precision.choose(device, "auto", channels_last=False)
    test_sets, results = _TestSets(), []
    for best in bests:
        done = None if force else _already_tested(best.trial_dir, best.folder)
        if done is None:
            out(f"testing {best.trial_dir.name} (epoch {best.epoch}, val dice_mean {best.val_dice_mean:.4f})")
            done = test_trial(best, test_sets, precision)
        results.append(done)
    return results


def format_results(results: list[dict[str, Any]]) -> str:
    """Checkpoint (trial, epoch, score) x mode -> validation and test Dice, averaged over seeds."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for result in results:
        source = result["source"]
        key = (
            source["kind"],
            source["encoder"],
            source.get("recipe") or "-",
            source.get("epoch"),
            source.get("score"),
            source.get("trial_name") or source.get("path") or "-",
            result["mode"],
        )
        groups.setdefault(key, []).append(result)

    def mean(members: list[dict[str, Any]], key: str) -> float:
        values = [float(m[key]) for m in members if not math.isnan(float(m[key]))]
        return sum(values) / len(values) if values else math.nan

    lines = [
        f"{'checkpoint':<13} {'encoder':<12} {'recipe':<9} {'epoch':>5} {'score':>7} "
        f"{'mode':<9} {'seeds':>5} "
        f"{'val dice':>8} {'test dice':>9} {'test hd95':>9}  trial"
    ]
    for (kind, encoder, recipe, epoch, score, trial, mode), members in sorted(groups.items(), key=str):
        score_text = "-" if score is None else f"{score:.4f}"
        lines.append(
            f"{kind:<13} {encoder:<12} {recipe:<9} "
            f"{str(epoch if epoch is not None else '-'):>5} {score_text:>7} "
            f"{mode:<9} {len(members):>5} {mean(members, 'val_dice_mean'):>8.4f} "
            f"{mean(members, 'test_dice_mean'):>9.4f} {mean(members, 'test_hd95_mean'):>9.2f}  {trial}"
        )
    units = sorted({str(m.get("test_hd95_unit")) for m in results})
    splits = sorted({str(m.get("split_mode")) for m in results})
    lines.append(
        f"(Dice: mean over foreground classes and cases; HD95 in {', '.join(units)}; "
        f"split mode {', '.join(splits)})"
    )
    return "\n".join(lines)
