"""Benchmark 1: what the robustness score costs, against its floor and a reference implementation.

For N target images of S x S pixels and an encoder (random init, eval mode,
batch 64, the suite's thread count), three things are timed interleaved:

- **floor**: 2N bare forward passes of the encoder up to the scored level
  (``forward_intermediates(..., stop_early=True)``) on ready, normalised
  tensors, outputs thrown away: the least any implementation must spend;
- **ours**: ``RobustnessProbe.score`` (:mod:`trainables.transferability`) on a
  probe built once (building it, i.e. jittering and normalising the two
  views, is timed as "views": it happens once per trial, not per epoch);
- **reference**: :func:`benchmarks.reference_score.reference_score`, a
  per-batch Python loop that jitters each batch, runs the full feature
  pyramid, gathers features in lists, concatenates and applies the formula.

Ours must equal the reference within 1e-5 (R and the mean positive and
negative distances), else :class:`ScoreMismatch` is raised. Reported per grid
point: min / median / max seconds of 5 interleaved repeats, and the ratios
ours/floor and ours/reference of the medians and, in brackets, of the minima
(the repeats least disturbed by other work on a shared machine). In a trial
the views are built once and the score runs every epoch; for a single score
of a single model (``medseg-search score`` on one file) the views are part of
the cost, hence also (views + ours) / reference.

Second part, the score's share of one pretraining epoch: in the demo
(``configs/demo.yaml``, simple recipe: train, validation and score timed with
``run_epoch`` on capped epochs, projected to the demo's full epoch) and in an
ImageNet-sized configuration (resnet50 at 224 px, 1,281,167 training and
50,000 validation images, N = 256 at 224 px; per-image costs measured on a
few batches and projected).

Run alone: ``python -m benchmarks.score [--full]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import (
    REPO,
    Options,
    Stats,
    demo_data,
    interleaved,
    markdown_table,
    run_benchmark,
)
from benchmarks.images import photo_batch
from benchmarks.reference_score import reference_score

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOLERANCE = 1e-5
BATCH_SIZE = 64
LEVEL = -2

#: (encoder, image size, N). The quick grid fits the suite's 15 minutes on 2 shared cores.
QUICK_GRID = [("resnet18", 128, 256), ("convnext_atto", 128, 64), ("resnet50", 128, 32)]
FULL_GRID = [
    (model, size, n)
    for model in ("resnet18", "resnet50", "convnext_atto", "convnext_tiny")
    for size in (128, 224)
    for n in (256, 1024)
]

IMAGENET_TRAIN_IMAGES, IMAGENET_VAL_IMAGES = 1_281_167, 50_000


class ScoreMismatch(RuntimeError):
    """Our score and the reference's differ by more than the tolerance."""


@torch.no_grad()
def floor_pass(model: torch.nn.Module, views: Sequence[torch.Tensor], level: int, batch_size: int) -> None:
    """2N forward passes up to the scored level, nothing else."""
    index = len(model.feature_info) + level  # type: ignore[arg-type]
    for view in views:
        for start in range(0, len(view), batch_size):
            model.forward_intermediates(  # type: ignore[operator]
                view[start : start + batch_size], indices=[index], intermediates_only=True, stop_early=True
            )


def measure_point(model_name: str, size: int, n_images: int, repeats: int) -> dict[str, Any]:
    """Floor, ours and reference on one (encoder, size, N); raises ScoreMismatch on unequal results."""
    from trainables.models import create_classifier, encoder_features
    from trainables.transferability import RobustnessProbe

    images = photo_batch(n_images, size, seed=n_images)
    model = create_classifier(model_name, num_classes=1000).eval()
    with torch.no_grad():
        encoder_features(model, images[:4], LEVEL, True)  # warm-up: allocator, kernels

    def build() -> RobustnessProbe:
        return RobustnessProbe(images, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=BATCH_SIZE)

    probe = build()
    seconds, values = interleaved(
        {
            "views": build,
            "floor": lambda: floor_pass(model, probe.views, LEVEL, BATCH_SIZE),
            "ours": lambda: probe.score(model).as_metrics(),
            "reference": lambda: reference_score(
                model, images, mean=IMAGENET_MEAN, std=IMAGENET_STD, level=LEVEL, batch_size=BATCH_SIZE
            ),
        },
        repeats,
    )
    ours, reference = values["ours"], values["reference"]
    difference = max(abs(ours[key] - reference[key]) for key in ours)
    if not difference <= TOLERANCE:
        raise ScoreMismatch(
            f"{model_name} {size}px N={n_images}: ours {ours} vs reference {reference} "
            f"(max difference {difference:.2e} > {TOLERANCE})"
        )
    stats = {name: Stats.of(samples) for name, samples in seconds.items()}
    return {
        "model": model_name,
        "image_size": size,
        "n_images": n_images,
        "forward_passes": 2 * n_images,
        "seconds": {name: s.as_dict() for name, s in stats.items()},
        "ours_over_floor": stats["ours"].median / stats["floor"].median,
        "ours_over_reference": stats["ours"].median / stats["reference"].median,
        "reference_over_floor": stats["reference"].median / stats["floor"].median,
        # minima: the runs least disturbed by other work on a shared machine
        "ours_over_floor_min": stats["ours"].min / stats["floor"].min,
        "ours_over_reference_min": stats["ours"].min / stats["reference"].min,
        # a single score of one model (medseg-search score on one file): the views are built for it
        "ours_with_views_over_reference": (stats["views"].median + stats["ours"].median)
        / stats["reference"].median,
        "ms_per_forward_floor": 1000 * stats["floor"].median / (2 * n_images),
        "robustness": ours["robustness"],
        "max_abs_difference": difference,
    }


def demo_share(options: Options, repeats: int) -> dict[str, Any]:
    """Train, validation and score of the demo's epoch (simple recipe), measured on capped epochs."""
    from search.config import load_experiment
    from trainables.loops import Precision
    from trainables.pretraining import build_run, run_epoch
    from trainables.settings import PretrainTrial

    data = demo_data(options)
    train_batches, val_batches = 8, 4
    experiment = load_experiment(
        REPO / "configs" / "demo.yaml",
        [
            f"storage_path={options.work_dir}",
            f"pretrain.train_batches_per_epoch={train_batches}",
            f"pretrain.val_batches={val_batches}",
        ],
        demo_dir=data["mnist"].parent,
    )
    trial = PretrainTrial.from_mapping(experiment.variants[0])
    run = build_run(trial, Precision.choose("cpu"))
    settings = trial.pretrain
    run_epoch(run, 1)  # warm-up
    train, evaluation, score = [], [], []
    for epoch in range(2, 2 + repeats):
        metrics = run_epoch(run, epoch)
        train_images = run.updates_per_epoch * settings.batch_size
        train_s = train_images / metrics["train_images_per_s"]
        train.append(train_s / train_images)
        evaluation.append(
            (metrics["epoch_time_s"] - metrics["score_time_s"] - train_s)
            / (val_batches * settings.micro_batch_size)
        )
        score.append(metrics["score_time_s"])
    full_train = len(run.train_loader.dataset) // settings.micro_batch_size // settings.accumulation_steps
    full_train_images = full_train * settings.batch_size
    val_images = len(run.val_loader.dataset)
    return _share(
        "demo: resnet10t 32 px, MNIST 4,000 train / 1,000 val; score N=128 brain slices at 64 px",
        Stats.of(train),
        Stats.of(evaluation),
        Stats.of(score),
        full_train_images,
        val_images,
    )


def imagenet_share(repeats: int) -> dict[str, Any]:
    """Per-image train / eval / score costs of resnet50 at 224 px, projected to an ImageNet epoch."""
    from trainables.loops import Precision, train_epoch
    from trainables.models import create_classifier
    from trainables.transferability import RobustnessProbe

    micro_batch, n_score = 4, 8
    model = create_classifier("resnet50", num_classes=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.05)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = photo_batch(micro_batch, 224, seed=1)
    targets = torch.randint(0, 1000, (micro_batch,))
    precision = Precision.choose("cpu")

    def train_step() -> float:
        result = train_epoch(
            model,
            [(images, targets, 0)],
            lambda m, x, y: criterion(m(x), y),
            optimizer,
            precision.grad_scaler(),
            precision,
            accumulation_steps=1,
            updates=1,
            on_update=lambda: None,
        )
        return micro_batch / result["train_images_per_s"]

    @torch.no_grad()
    def eval_step() -> None:
        model.eval()
        model(images)

    probe = RobustnessProbe(photo_batch(n_score, 224, seed=2), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    train_step()  # warm-up
    train = [train_step() / micro_batch for _ in range(repeats)]
    evaluation, _ = interleaved({"eval": eval_step}, repeats)
    score, _ = interleaved({"score": lambda: probe.score(model)}, repeats)
    n_target = 256
    return _share(
        "ImageNet-sized: resnet50 224 px, 1,281,167 train / 50,000 val; score N=256 at 224 px "
        f"(per-image costs from micro-batches of {micro_batch} and a probe of N={n_score}, projected)",
        Stats.of(train),
        Stats.of([s / micro_batch for s in evaluation["eval"]]),
        Stats.of([s * n_target / n_score for s in score["score"]]),
        IMAGENET_TRAIN_IMAGES,
        IMAGENET_VAL_IMAGES,
    )


def _share(
    label: str, train: Stats, evaluation: Stats, score: Stats, train_images: int, val_images: int
) -> dict[str, Any]:
    epoch_without = train.median * train_images + evaluation.median * val_images
    return {
        "configuration": label,
        "train_s_per_image": train.as_dict(),
        "eval_s_per_image": evaluation.as_dict(),
        "score_s": score.as_dict(),
        "train_images": train_images,
        "val_images": val_images,
        "projected_epoch_s_without_score": epoch_without,
        "score_share_of_epoch": score.median / (epoch_without + score.median),
    }


def run(options: Options) -> dict[str, Any]:
    torch.set_num_threads(options.threads)
    repeats = options.repeats_or(quick=5, full=5)
    grid = FULL_GRID if options.full else QUICK_GRID
    points = []
    for model_name, size, n_images in grid:
        print(f"score: {model_name} {size}px N={n_images} ...", flush=True)
        points.append(measure_point(model_name, size, n_images, repeats))
    print("score: share of a pretraining epoch ...", flush=True)
    share_repeats = min(repeats, 3)  # the share is a projection: 3 repeats are enough
    shares = [demo_share(options, share_repeats), imagenet_share(share_repeats)]
    return {"repeats": repeats, "batch_size": BATCH_SIZE, "level": LEVEL, "points": points, "shares": shares}


def tables(result: dict[str, Any]) -> str:
    rows = []
    for p in result["points"]:
        s = {name: Stats(**v) for name, v in p["seconds"].items()}
        rows.append(
            [
                p["model"],
                p["image_size"],
                p["n_images"],
                s["floor"].show(2),
                s["ours"].show(2),
                s["reference"].show(2),
                s["views"].show(2),
                f"{p['ours_over_floor']:.2f} ({p['ours_over_floor_min']:.2f})",
                f"{p['ours_over_reference']:.2f} ({p['ours_over_reference_min']:.2f})",
                f"{p['ours_with_views_over_reference']:.2f}",
                f"{p['max_abs_difference']:.1e}",
            ]
        )
    cost = markdown_table(
        [
            "encoder",
            "px",
            "N",
            "floor s (2N fwd)",
            "ours s",
            "reference s",
            "views s (once per trial)",
            "ours/floor: medians (minima)",
            "ours/ref: medians (minima)",
            "(views + ours)/ref",
            "max abs diff",
        ],
        rows,
    )
    share_rows = [
        [
            sh["configuration"],
            f"{1000 * sh['train_s_per_image']['median']:.2f}",
            f"{1000 * sh['eval_s_per_image']['median']:.2f}",
            f"{sh['score_s']['median']:.2f}",
            _duration(sh["projected_epoch_s_without_score"]),
            f"{100 * sh['score_share_of_epoch']:.3g}%",
        ]
        for sh in result["shares"]
    ]
    share = markdown_table(
        ["configuration", "train ms/img", "eval ms/img", "score s", "epoch without score", "score's share"],
        share_rows,
    )
    return f"{cost}\n\n{share}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_benchmark(
        "score",
        __doc__ or "",
        run,
        tables,
        lambda o: f"Score cost ({o.grid} grid, {o.threads} threads)",
        argv,
    )


if __name__ == "__main__":
    main()
