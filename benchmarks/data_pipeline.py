"""Benchmark 3: decoded and augmented images per second of the pretraining loader, to size loaders.

JPEGs of ImageNet's size (500 x 375 / 375 x 500, quality 90, made from
real photos by :mod:`benchmarks.images`) in ImageNet's folder layout are read
by the product's loader (:func:`trainables.data.classification.make_loader`
with ``ImageFolderDataset`` and ``build_transforms``) at 224 px, batch 64, for
the paper's two recipes and 0, 1 and 2 loader workers:

- ``simple``: decode, RandomResizedCrop(scale 0.8-1), flip, normalise;
- ``advanced``: the same plus RandAugment (2 ops, magnitude 9) and
  RandomErasing 0.25 (Mixup/CutMix work on whole batches inside the training
  step, not in the loader, and are not part of this number).

One pass over the images (192 in the quick grid, 1024 in the full one) is
one measurement (workers are started at every pass, as the product's
non-persistent workers are at every epoch); the six loaders take turns, round
after round. Reported are images/s over the whole pass and the seconds until
the first batch. The consumer does nothing with the batches; with 0 workers
the loading runs in the main process with the suite's torch threads, as it
does in a trial.

Run alone: ``python -m benchmarks.data_pipeline [--full]``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import (
    Options,
    Stats,
    markdown_table,
    run_benchmark,
)
from benchmarks.images import write_imagenet_like

IMAGE_SIZE, BATCH_SIZE = 224, 64
WORKERS = (0, 1, 2)


def one_pass(loader: Any) -> tuple[float, float, int]:
    """Seconds for the whole pass, seconds to the first batch, images read."""
    started = time.perf_counter()
    first, images = None, 0
    for batch, _, skipped in loader:
        images += batch.shape[0] + skipped
        if first is None:
            first = time.perf_counter() - started
    return time.perf_counter() - started, first or 0.0, images


def build_loader(recipe: str, workers: int, samples: Any) -> Any:
    """The product's training loader for one recipe and worker count."""
    from trainables.data.classification import ImageFolderDataset, build_transforms, make_loader
    from trainables.settings import NORMALIZATIONS, RECIPES

    preset = RECIPES[recipe]
    mean, std = NORMALIZATIONS["imagenet"]
    train_tf, _ = build_transforms(
        image_size=IMAGE_SIZE,
        mean=mean,
        std=std,
        rrc_scale=(0.8, 1.0),
        hflip=0.5,
        randaugment=preset["randaugment"],
        random_erasing=preset["random_erasing"],
    )
    return make_loader(
        ImageFolderDataset(samples, train_tf, "error"),
        batch_size=BATCH_SIZE,
        train=True,
        num_workers=workers,
        pin_memory=False,
    )


def measure(samples: Any, repeats: int) -> list[dict[str, Any]]:
    """Every (recipe, workers) pair, one pass each per round, rounds interleaved (a load spike on the
    shared machine then hits every pair, not one)."""
    from trainables.data.classification import seed_epoch

    pairs = [(recipe, workers) for recipe in ("simple", "advanced") for workers in WORKERS]
    loaders = {pair: build_loader(*pair, samples) for pair in pairs}
    rates: dict[tuple[str, int], list[float]] = {pair: [] for pair in pairs}
    firsts: dict[tuple[str, int], list[float]] = {pair: [] for pair in pairs}
    for repeat in range(repeats):
        print(f"data pipeline: round {repeat + 1}/{repeats} ...", flush=True)
        shift = repeat % len(pairs)
        for pair in pairs[shift:] + pairs[:shift]:
            seed_epoch(loaders[pair], 0, repeat)
            seconds, first, images = one_pass(loaders[pair])
            rates[pair].append(images / seconds)
            firsts[pair].append(first)
    return [
        {
            "recipe": recipe,
            "workers": workers,
            "images_per_pass": (len(samples) // BATCH_SIZE) * BATCH_SIZE,
            "images_per_s": Stats.of(rates[recipe, workers]).as_dict(),
            "first_batch_s": Stats.of(firsts[recipe, workers]).as_dict(),
        }
        for recipe, workers in pairs
    ]


def run(options: Options) -> dict[str, Any]:
    from trainables.data.classification import index_split

    torch.set_num_threads(options.threads)
    repeats = options.repeats_or(quick=3, full=5)
    n_images = 1024 if options.full else 192
    root, source = write_imagenet_like(options.work_dir / f"jpegs-{n_images}", n_images)
    samples = index_split(root / "train").samples
    rows = measure(samples, repeats)
    return {
        "repeats": repeats,
        "images": n_images,
        "image_source": source,
        "jpeg": "500 x 375 or 375 x 500, quality 90",
        "image_size": IMAGE_SIZE,
        "batch_size": BATCH_SIZE,
        "rows": rows,
    }


def tables(result: dict[str, Any]) -> str:
    rows = []
    for row in result["rows"]:
        rate = Stats(**row["images_per_s"])
        first = Stats(**row["first_batch_s"])
        rows.append([row["recipe"], row["workers"], rate.show(0), first.show(2)])
    note = (
        f"\n{result['images']} JPEGs ({result['jpeg']}, from {result['image_source']}), "
        f"{result['image_size']} px, batch {result['batch_size']}; one pass per measurement."
    )
    return markdown_table(["recipe", "loader workers", "images/s", "first batch s"], rows) + "\n" + note


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_benchmark(
        "data_pipeline", __doc__ or "", run, tables, lambda o: f"Data pipeline ({o.grid} grid)", argv
    )


if __name__ == "__main__":
    main()
