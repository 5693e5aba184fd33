"""Benchmark 2: the cost of running the pretraining loop as a Ray Tune trial instead of a plain function.

The same trial (the demo's config, simple recipe: resnet10t at 32 px on the
real MNIST digits, batch 128 in micro-batches of 64, validation, and the score
on 128 brain slices at 64 px every epoch) runs, interleaved:

- **plain**: :func:`trainables.pretraining.run_pretraining` in this process,
  ``torch.set_num_threads(threads)``, with a reporter that keeps each epoch's
  checkpoint as Tune does (copies the folder to storage, keeps the last 2);
- **tune**: the product's search (:func:`search.pretrain_search.run_pretrain_search`,
  peak-stopping scheduler, snapshot backup, progress printer) with one trial of
  ``cpus_per_trial = threads`` (the trial sets as many torch threads), in a
  local Ray started by this process.

Measured per epoch (the first epoch, which builds the run, is left out): the
training loop's own images/s (``train_images_per_s``), the epoch's wall time
(between consecutive reports as the consumer sees them: the driver's
``on_trial_result`` for Tune, the end of the reporter for plain) and the
epoch's throughput (training images / epoch wall). The **fixed cost per
reported epoch** is the epoch wall minus the epoch's own compute
(``epoch_time_s``: train, validation, score): the peak rule, writing the
checkpoint and record, and handing both over (plain: the copy; Tune:
``tune.report``, persisting the checkpoint, the driver's callbacks). Also the
start-up before the first epoch. Goal: Tune's throughput at 0.95 or more of
plain's.

Run alone: ``python -m benchmarks.tune_overhead [--full]``.
"""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from benchmarks.common import (
    REPO,
    Options,
    Stats,
    demo_data,
    markdown_table,
    run_benchmark,
)

KEEP = 2  # checkpoints kept, as the demo's checkpoint_num_to_keep


def _quiet(line: str) -> None:
    """The search's progress output, swallowed (a module function: callbacks holding it pickle)."""


class ResultTimes(tune.Callback):
    """Driver-side arrival time of every result (perf_counter) with its timing metrics."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self.rows.append({"at": time.perf_counter(), **_timing(result)})


class PlainReporter:
    """Keeps each epoch's checkpoint folder (a copy in storage, the last ``KEEP``) and the times."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.rows: list[dict[str, float]] = []
        storage.mkdir(parents=True, exist_ok=True)

    def __call__(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        epoch = int(metrics["epoch"])
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.storage / f"checkpoint_{epoch:06d}")
        shutil.rmtree(self.storage / f"checkpoint_{epoch - KEEP:06d}", ignore_errors=True)
        self.rows.append({"at": time.perf_counter(), **_timing(metrics)})


def _timing(result: dict[str, Any]) -> dict[str, float]:
    return {key: float(result[key]) for key in ("epoch", "epoch_time_s", "train_images_per_s")}


def _experiment(options: Options, name: str, epochs: int, train_batches: int | None) -> Any:
    from search.config import load_experiment

    data = demo_data(options)
    overrides = [
        f"name={name}",
        f"storage_path={options.work_dir / 'tune-overhead'}",
        "tune.grid={}",
        f"tune.cpus_per_trial={options.threads}",
        f"pretrain.epochs={epochs}",
        "pretrain.warmup_epochs=1",
        f"peak.grace_period={epochs}",  # the scheduler must not stop the trial before the last epoch
        f"peak.patience={epochs}",
    ]
    if train_batches is not None:
        overrides += [f"pretrain.train_batches_per_epoch={train_batches}", "pretrain.val_batches=2"]
    return load_experiment(REPO / "configs" / "demo.yaml", overrides, demo_dir=data["mnist"].parent)


def _epochs(rows: list[dict[str, float]], started: float, batch_size: int, updates: int) -> dict[str, Any]:
    """Per-epoch walls, throughputs and fixed costs after the first epoch; start-up before it."""
    walls = [b["at"] - a["at"] for a, b in zip(rows, rows[1:], strict=False)]
    later = rows[1:]
    images = batch_size * updates
    return {
        "epoch_wall_s": walls,
        "epoch_compute_s": [r["epoch_time_s"] for r in later],
        "fixed_cost_s": [w - r["epoch_time_s"] for w, r in zip(walls, later, strict=True)],
        "epoch_images_per_s": [images / w for w in walls],
        "train_images_per_s": [r["train_images_per_s"] for r in later],
        "startup_s": rows[0]["at"] - started - rows[0]["epoch_time_s"],
    }


def run_plain(options: Options, name: str, epochs: int, train_batches: int | None) -> dict[str, Any]:
    from trainables.pretraining import run_pretraining
    from trainables.settings import PretrainTrial

    experiment = _experiment(options, name, epochs, train_batches)
    folder = experiment.path
    shutil.rmtree(folder, ignore_errors=True)
    reporter = PlainReporter(folder / "plain")
    trial = PretrainTrial.from_mapping(experiment.variants[0])
    started = time.perf_counter()
    run_pretraining(trial, report=reporter, num_threads=options.threads)
    return _summary(experiment, reporter.rows, started)


def run_tune(options: Options, name: str, epochs: int, train_batches: int | None) -> dict[str, Any]:
    from search.pretrain_search import run_pretrain_search

    experiment = _experiment(options, name, epochs, train_batches)
    shutil.rmtree(experiment.path, ignore_errors=True)
    times = ResultTimes()
    started = time.perf_counter()
    outcome = run_pretrain_search(experiment, _quiet, [times])
    if outcome.errors:
        raise RuntimeError(f"the Tune trial failed: {outcome.errors}")
    return _summary(experiment, times.rows, started)


def _summary(experiment: Any, rows: list[dict[str, float]], started: float) -> dict[str, Any]:
    from trainables.settings import PretrainTrial

    trial = PretrainTrial.from_mapping(experiment.variants[0])
    settings = trial.pretrain
    micro = settings.train_batches_per_epoch or _micro_batches(trial)
    updates = micro // settings.accumulation_steps
    return _epochs(rows, started, settings.batch_size, updates)


def _micro_batches(trial: Any) -> int:
    from trainables.data.classification import index_split

    root = Path(trial.classification.root) / trial.classification.train_dir
    return len(index_split(root).samples) // trial.pretrain.micro_batch_size


def run(options: Options) -> dict[str, Any]:
    from search.runtime import ray_session

    repeats = options.repeats_or(quick=2, full=3)
    epochs, train_batches = (5, None) if options.full else (4, 12)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "tune": []}
    with ray_session(num_cpus=options.threads):
        for index in range(repeats):
            order = ("plain", "tune") if index % 2 == 0 else ("tune", "plain")
            for mode in order:
                print(f"tune overhead: {mode} run {index + 1}/{repeats} ...", flush=True)
                runner = run_plain if mode == "plain" else run_tune
                runs[mode].append(runner(options, f"{mode}-{index}", epochs, train_batches))
    summary = {mode: _pooled(results) for mode, results in runs.items()}
    plain, tuned = summary["plain"], summary["tune"]
    return {
        "repeats": repeats,
        "epochs_per_run": epochs,
        "train_batches_per_epoch": train_batches or "all",
        "configuration": "configs/demo.yaml, simple recipe, one trial, "
        f"{options.threads} threads / cpus_per_trial, num_workers 0",
        "runs": runs,
        "summary": summary,
        "tune_over_plain_epoch_images_per_s": plain["epoch_wall_s"]["median"]
        / tuned["epoch_wall_s"]["median"],
        "tune_over_plain_train_images_per_s": tuned["train_images_per_s"]["median"]
        / plain["train_images_per_s"]["median"],
        "tune_extra_fixed_cost_s": tuned["fixed_cost_s"]["median"] - plain["fixed_cost_s"]["median"],
        # the same epoch compute under both: what the fixed costs alone make of the throughput
        "tune_over_plain_from_fixed_costs": _fixed_cost_ratio(plain, tuned),
    }


def _fixed_cost_ratio(plain: dict[str, Any], tuned: dict[str, Any]) -> float:
    compute = statistics.median([plain["epoch_compute_s"]["median"], tuned["epoch_compute_s"]["median"]])
    return (compute + plain["fixed_cost_s"]["median"]) / (compute + tuned["fixed_cost_s"]["median"])


def _pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    pooled: dict[str, Any] = {}
    for key in (
        "epoch_wall_s",
        "epoch_compute_s",
        "fixed_cost_s",
        "epoch_images_per_s",
        "train_images_per_s",
    ):
        pooled[key] = Stats.of([v for r in results for v in r[key]]).as_dict()
    pooled["startup_s"] = Stats.of([r["startup_s"] for r in results]).as_dict()
    return pooled


def epochs_for_goal(extra_fixed_cost_s: float, goal: float = 0.95) -> float:
    """The epoch compute time at which Tune's extra fixed cost leaves ``goal`` of plain's throughput."""
    return extra_fixed_cost_s * goal / (1 - goal)


def tables(result: dict[str, Any]) -> str:
    def show(mode: str, key: str, digits: int = 2) -> str:
        s = result["summary"][mode][key]
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    rows = [
        [
            mode,
            show(mode, "train_images_per_s", 0),
            show(mode, "epoch_images_per_s", 0),
            show(mode, "epoch_wall_s"),
            show(mode, "epoch_compute_s"),
            show(mode, "fixed_cost_s"),
            show(mode, "startup_s", 1),
        ]
        for mode in ("plain", "tune")
    ]
    rows.append(
        [
            "**tune / plain**",
            f"{result['tune_over_plain_train_images_per_s']:.3f}",
            f"**{result['tune_over_plain_epoch_images_per_s']:.3f}** measured, "
            f"**{result['tune_over_plain_from_fixed_costs']:.3f}** from the fixed costs",
            "",
            "",
            f"{result['tune_extra_fixed_cost_s']:+.2f} s",
            "",
        ]
    )
    table = markdown_table(
        [
            "run as",
            "train loop img/s",
            "epoch img/s",
            "epoch wall s",
            "epoch compute s",
            "fixed cost s/epoch",
            "start-up s",
        ],
        rows,
    )
    extra = max(result["tune_extra_fixed_cost_s"], 0.0)
    compute = result["summary"]["tune"]["epoch_compute_s"]["median"]
    note = (
        f"\nEpochs of {compute:.1f} s compute ({result['train_batches_per_epoch']} micro-batches of 64, "
        f"{result['epochs_per_run']} epochs per run, the first left out, {result['repeats']} runs each). "
        "The measured ratio includes the load of the shared machine on each run (see the training loop's "
        "own images/s); the ratio from the fixed costs puts both fixed costs on the same compute time. "
        f"With Tune's extra {extra:.2f} s per reported epoch, epochs of {epochs_for_goal(extra):.1f} s "
        "or longer keep a Tune trial at 0.95 of the plain loop or better."
    )
    return table + "\n" + note


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_benchmark(
        "tune_overhead",
        __doc__ or "",
        run,
        tables,
        lambda o: f"Tune overhead ({o.grid} grid, {o.threads} threads)",
        argv,
    )


if __name__ == "__main__":
    main()
