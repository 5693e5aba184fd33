"""One pretraining trial, without Ray: restore, then per epoch train, evaluate, score, report.

``run_pretraining`` is what the Ray Tune trainable (:mod:`trainables.pretrain`)
runs; it takes a ``report(metrics, checkpoint_dir)`` callback and the training
state to resume from, so it also runs (and is tested) without Ray.

Resume contract: the checkpoint written after epoch e holds the model,
optimizer, LR-schedule position, grad scaler, RNG states and the metric
history; a run restored from it continues at epoch e + 1 and, on CPU, reports
bitwise the same metrics (timings aside) as a run that was never interrupted.
The LR horizon is always ``epochs``, also for trials a scheduler stops early.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from trainables.checkpoints import (
    capture_rng,
    read_weights,
    restore_rng,
    save_training_state,
)
from trainables.data.classification import (
    ImageFolderDataset,
    build_transforms,
    index_split,
    make_loader,
    seed_epoch,
)
from trainables.data.targets import sample_target
from trainables.distributed import Distribution, unwrap
from trainables.errors import DataError
from trainables.loops import LossFn, Precision, evaluate_classifier, train_epoch
from trainables.models import create_classifier, load_backbone
from trainables.peak import assess
from trainables.records import write_record
from trainables.settings import PretrainTrial, ScoreSettings
from trainables.transferability import RobustnessProbe

#: report(metrics, checkpoint_dir): called once per epoch; the folder is deleted afterwards.
Reporter = Callable[[dict[str, Any], Path | None], None]

#: Metrics that measure time, not results (they differ between identical runs).
TIMING_METRICS = ("train_images_per_s", "epoch_time_s", "score_time_s")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class PretrainingRun:
    """The live objects of one trial."""

    trial: PretrainTrial
    precision: Precision
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: CosineLRScheduler
    scaler: torch.amp.GradScaler
    train_loader: Any
    val_loader: Any
    classes: tuple[str, ...]
    updates_per_epoch: int
    compute_loss: LossFn
    probes: dict[str, RobustnessProbe]
    distribution: Distribution = dataclasses.field(default_factory=Distribution)
    num_updates: int = 0
    best_accuracy: tuple[int, float, dict[str, torch.Tensor]] | None = None  # epoch, top-1, weights

    def step_schedule(self) -> None:
        self.num_updates += 1
        self.schedule.step_update(self.num_updates)

    def state(self, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "num_updates": self.num_updates,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "history": history,
            "model_name": self.trial.pretrain.model,
            "classes": list(self.classes),
            **self._best_accuracy_state(),
        }

    def _best_accuracy_state(self) -> dict[str, Any]:
        if self.best_accuracy is None:
            return {}
        epoch, top1, weights = self.best_accuracy
        return {"best_accuracy_epoch": epoch, "best_accuracy_top1": top1, "best_accuracy_model": weights}

    def track_best_accuracy(self, epoch: int, top1: float) -> None:
        """Keep a CPU copy of the weights of the best-top-1 epoch (``pretrain.keep_best_accuracy``)."""
        if self.trial.pretrain.keep_best_accuracy and (
            self.best_accuracy is None or top1 > self.best_accuracy[1]
        ):
            weights = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(self.model).state_dict().items()}
            self.best_accuracy = (epoch, top1, weights)

    def restore(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.num_updates = int(state["num_updates"])
        self.schedule.step_update(self.num_updates)
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        if "best_accuracy_model" in state:
            self.best_accuracy = (
                int(state["best_accuracy_epoch"]),
                float(state["best_accuracy_top1"]),
                state["best_accuracy_model"],
            )


def build_probes(
    score: ScoreSettings, mean: tuple[float, ...], std: tuple[float, ...]
) -> dict[str, RobustnessProbe]:
    """One probe per target set: its fixed image sample in two fixed views."""
    probes = {}
    for target in score.targets:
        images = sample_target(
            target.format,
            target.root,
            slice_axis=target.slice_axis,
            n_images=score.n_images,
            seed=score.sample_seed,
            size=score.image_size,
        )
        probes[target.name] = RobustnessProbe(
            images,
            mean=mean,
            std=std,
            views=score.views,
            view_seed=score.view_seed,
            level=score.level,
            pooled=score.pooled,
            distance=score.distance,
            margin=score.margin,
            batch_size=score.batch_size,
        )
    return probes


def _loss_function(trial: PretrainTrial, num_classes: int) -> LossFn:
    settings = trial.pretrain
    if not settings.uses_mixup:
        criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)
        return lambda model, images, targets: criterion(model(images), targets)
    mixup = Mixup(
        mixup_alpha=settings.mixup_alpha,
        cutmix_alpha=settings.cutmix_alpha,
        label_smoothing=settings.label_smoothing,
        num_classes=num_classes,
    )
    soft_criterion = SoftTargetCrossEntropy()

    def mixed_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images, soft_targets = mixup(images, targets)
        return soft_criterion(model(images), soft_targets)

    return mixed_loss


def build_run(
    trial: PretrainTrial, precision: Precision, distribution: Distribution | None = None
) -> PretrainingRun:
    """Data, model, optimizer, LR schedule and probes of a trial, seeded by ``pretrain.seed``.

    In a data-parallel trial every worker takes ``micro_batch_size / workers``
    images of each micro-batch (the optimizer sees the same global batches as
    a single process) and the model is wrapped for DistributedDataParallel.
    """
    distribution = distribution or Distribution()
    settings, data = trial.pretrain, trial.classification
    seed_everything(settings.seed)
    root = Path(data.root)
    train_index = index_split(root / data.train_dir)
    val_index = index_split(root / data.val_dir, classes=train_index.classes)
    mean, std = settings.mean_std
    train_tf, eval_tf = build_transforms(
        image_size=settings.image_size,
        mean=mean,
        std=std,
        rrc_scale=settings.rrc_scale,
        hflip=settings.hflip,
        randaugment=settings.randaugment,
        random_erasing=settings.random_erasing,
    )
    pin = precision.device.type == "cuda"
    train_loader = make_loader(
        ImageFolderDataset(train_index.samples, train_tf, data.on_bad_image),
        batch_size=settings.micro_batch_size // distribution.world,
        train=True,
        num_workers=data.num_workers,
        pin_memory=pin,
        shard=(distribution.rank, distribution.world),
    )
    val_loader = make_loader(
        ImageFolderDataset(val_index.samples, eval_tf, data.on_bad_image),
        batch_size=settings.micro_batch_size,
        train=False,
        num_workers=data.num_workers,
        pin_memory=pin,
    )
    micro_batches = len(train_loader)
    if settings.train_batches_per_epoch is not None:
        micro_batches = min(micro_batches, settings.train_batches_per_epoch)
    updates_per_epoch = micro_batches // settings.accumulation_steps
    if updates_per_epoch < 1:
        raise DataError(
            f"an epoch holds {micro_batches} micro-batches of {settings.micro_batch_size}, fewer than one "
            f"batch of {settings.batch_size}: lower pretrain.batch_size or add training images"
        )
    num_classes = len(train_index.classes)
    model = create_classifier(settings.model, num_classes, settings.drop_path_rate)
    if settings.init_checkpoint:
        load_backbone(model, read_weights(settings.init_checkpoint), settings.init_checkpoint)
    model = distribution.wrap(precision.prepare(model))
    optimizer = create_optimizer_v2(
        model, opt="adamw", lr=settings.lr, weight_decay=settings.weight_decay, betas=settings.betas
    )
    schedule = CosineLRScheduler(
        optimizer,
        t_initial=settings.epochs * updates_per_epoch,
        lr_min=settings.min_lr,
        warmup_t=settings.warmup_epochs * updates_per_epoch,
        warmup_lr_init=settings.lr * settings.warmup_lr_ratio,
        t_in_epochs=False,
    )
    return PretrainingRun(
        trial=trial,
        precision=precision,
        model=model,
        optimizer=optimizer,
        schedule=schedule,
        scaler=precision.grad_scaler(),
        train_loader=train_loader,
        val_loader=val_loader,
        classes=train_index.classes,
        updates_per_epoch=updates_per_epoch,
        compute_loss=_loss_function(trial, num_classes),
        # only the main worker validates and scores
        probes=build_probes(trial.score, mean, std) if distribution.is_main else {},
        distribution=distribution,
    )


def run_epoch(run: PretrainingRun, epoch: int) -> dict[str, Any]:
    """Train one epoch, evaluate on val, score every target; returns the epoch's metrics."""
    settings, score = run.trial.pretrain, run.trial.score
    started = time.perf_counter()
    seed_epoch(run.train_loader, settings.seed, epoch)
    metrics: dict[str, Any] = {"epoch": epoch}
    metrics.update(
        train_epoch(
            run.model,
            run.train_loader,
            run.compute_loss,
            run.optimizer,
            run.scaler,
            run.precision,
            accumulation_steps=settings.accumulation_steps,
            updates=run.updates_per_epoch,
            on_update=run.step_schedule,
        )
    )
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    if run.distribution.world > 1:
        metrics["train_loss"] = run.distribution.mean(torch.tensor(metrics["train_loss"]))
    if not run.distribution.is_main:
        metrics["epoch_time_s"] = time.perf_counter() - started
        return metrics
    model = unwrap(run.model)  # no collective calls from here on: the other workers do not evaluate
    metrics.update(
        evaluate_classifier(
            model,
            run.val_loader,
            run.precision,
            num_classes=len(run.classes),
            max_batches=settings.val_batches,
        )
    )
    score_started = time.perf_counter()
    for target in score.targets:
        result = run.probes[target.name].score(model, run.precision.device, run.precision.amp_dtype)
        metrics.update(result.as_metrics(score.metric_names(target)))
    if len(score.targets) > 1:  # the primary target under the unsuffixed names
        primary = score.metric_names(score.primary_target)
        metrics.update({plain: metrics[named] for plain, named in primary.items()})
    now = time.perf_counter()
    metrics["score_time_s"] = now - score_started
    metrics["epoch_time_s"] = now - started
    return metrics


def run_pretraining(
    trial: PretrainTrial,
    *,
    report: Reporter,
    restore_state: dict[str, Any] | None = None,
    device: str | None = None,
    num_threads: int | None = None,
    labels: dict[str, Any] | None = None,
    distribution: Distribution | None = None,
) -> None:
    """Pretrain until ``pretrain.epochs``, reporting metrics and a checkpoint every epoch.

    Never stops early on its own: stopping is the Tune scheduler's decision.
    In a data-parallel trial every worker runs this; only the main one
    validates, scores and checkpoints (the others report their averaged
    training loss without a checkpoint).
    Every checkpoint folder also holds ``record.json``: the epoch, ``labels``
    (trial id and name), encoder, recipe, the peak rule and its metric, the
    trial's config and the metric history so far.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    settings = trial.pretrain
    precision = Precision.choose(device or settings.device, settings.amp, settings.channels_last)
    run = build_run(trial, precision, distribution)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if restore_state is not None:
        run.restore(restore_state)
        history, start_epoch = list(restore_state["history"]), int(restore_state["epoch"]) + 1
    record = {
        **(labels or {}),
        "encoder": settings.model,
        "recipe": settings.recipe,
        "metric": trial.peak.metric,
        "rule": dataclasses.asdict(trial.rule),
        "config": TypeAdapter(PretrainTrial).dump_python(trial, mode="json"),
    }
    for epoch in range(start_epoch, settings.epochs + 1):
        metrics = run_epoch(run, epoch)
        if not run.distribution.is_main:
            report(metrics, None)
            continue
        metrics.update(peak_metrics(history + [metrics], trial))
        history.append({k: v for k, v in metrics.items() if k not in TIMING_METRICS})
        run.track_best_accuracy(epoch, metrics["val_top1"])
        with tempfile.TemporaryDirectory(prefix="medseg-ckpt-") as checkpoint_dir:
            save_training_state(checkpoint_dir, run.state(epoch, history))
            write_record(checkpoint_dir, {"epoch": epoch, **record, "history": history})
            report(metrics, Path(checkpoint_dir))


def peak_metrics(rows: list[dict[str, Any]], trial: PretrainTrial) -> dict[str, float]:
    """The peak rule's view of the watched metric after the last row (smoothed, best, peak epoch)."""
    metric = trial.peak.metric
    return assess([(int(r["epoch"]), float(r[metric])) for r in rows], trial.rule).as_metrics(metric)
