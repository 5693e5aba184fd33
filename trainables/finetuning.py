"""One downstream trial, without Ray: restore, then per epoch train, validate, record, report.

``run_finetuning`` fine-tunes (or, with ``mode: frozen``, trains only the
decoder of) a ``smp.Unet`` whose encoder comes from a selected pretraining
checkpoint. Frozen mode: the encoder gets no gradient and stays in eval mode,
so its BatchNorm statistics stay those of pretraining (the paper's code let
them drift). ``freeze_batchnorm`` keeps every BatchNorm layer in eval mode.

Every epoch reports ``epoch``, ``train_loss``, ``lr`` and the validation
metrics of :mod:`trainables.metrics` (``dice_mean``, ``dice_<class>``,
``iou_*``, ``hd95_*``), writes a checkpoint (``state.pt`` + ``record.json``),
and rewrites ``history.json`` (metrics by epoch, deduplicated on resume) in
the trial folder: Tune's own history loses rows across restores.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from pydantic import TypeAdapter
from torch import nn
from torch.utils.data import DataLoader, default_collate

from trainables.checkpoints import capture_rng, read_weights, restore_rng, save_training_state
from trainables.data.formats import find_cases
from trainables.data.samples import SegmentationDataset, input_statistics, load_split, train_transform
from trainables.data.splits import Splits, make_splits
from trainables.distributed import Distribution, GlobalBatchSampler, unwrap
from trainables.errors import CheckpointError, DataError
from trainables.evaluation import evaluate_parts
from trainables.finetune_settings import FinetuneTrial, SourceCheckpoint
from trainables.loops import LossFn, Precision, train_epoch
from trainables.models import create_unet
from trainables.pretraining import seed_everything
from trainables.records import atomic_write, write_record
from trainables.settings import NORMALIZATIONS

#: report(metrics, checkpoint_dir): once per epoch; checkpoint_dir is None on every data-parallel
#: worker but the main one
Reporter = Callable[[dict[str, Any], Path | None], None]
HISTORY_FILE = "history.json"
TIMING_METRICS = ("train_images_per_s", "epoch_time_s")


def trial_splits(trial: FinetuneTrial) -> Splits:
    """The train / val / test split of the trial's set (the same for every trial of a set)."""
    data = trial.data
    classes = len(data.class_names)
    train = find_cases(data.format, data.root, "train", data.slice_axis, classes)
    test = find_cases(data.format, data.root, "test", data.slice_axis, classes)
    split = data.split
    return make_splits(
        train,
        test,
        mode=split.mode,
        val_fraction=split.val_fraction,
        test_fraction=split.test_fraction,
        seed=split.seed,
        split_file=split.file,
        source=data.root,
    )


def source_weights(source: SourceCheckpoint) -> dict[str, torch.Tensor] | None:
    """The encoder weights a trial starts from (None: random initialisation)."""
    if source.kind == "random_init" or source.path is None:
        return None
    path = Path(source.path)
    if source.weights_key != "model" or path.name == "state.pt":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({exc})") from None
        if not isinstance(state, dict) or source.weights_key not in state:
            raise CheckpointError(f"checkpoint {path} holds no {source.weights_key!r} weights")
        weights: dict[str, torch.Tensor] = state[source.weights_key]
        return weights
    return read_weights(path)


def _collate(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    images, masks = default_collate(batch)
    return images, masks, 0


def _loss(name: str) -> LossFn:
    from segmentation_models_pytorch.losses import DiceLoss

    dice, cross_entropy = DiceLoss("multiclass", from_logits=True), nn.CrossEntropyLoss()
    terms = {"dice": (dice,), "cross_entropy": (cross_entropy,), "dice_ce": (dice, cross_entropy)}[name]
    return lambda model, images, masks: sum(term(model(images), masks) for term in terms)


@dataclass
class FinetuningRun:
    """The live objects of one downstream trial."""

    trial: FinetuneTrial
    precision: Precision
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loader: DataLoader[Any]
    val_parts: list[Any]
    mean: list[float]
    std: list[float]
    updates_per_epoch: int
    loss: LossFn
    distribution: Distribution = field(default_factory=Distribution)
    step_losses: list[float] = field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        """The U-Net itself (inside any data-parallel wrapper)."""
        return unwrap(self.model)

    def record_step_loss(self, loss: torch.Tensor) -> None:
        """Keep the first ``finetune.record_step_losses`` step losses (averaged over workers)."""
        if len(self.step_losses) < self.trial.finetune.record_step_losses:
            self.step_losses.append(self.distribution.mean(loss))

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.trial.mode == "frozen":
            cast(Any, unwrap(model)).encoder.eval()
        if self.trial.finetune.freeze_batchnorm:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def state(self, epoch: int, history: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "history": history,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])


def build_model(trial: FinetuneTrial, channels: int) -> nn.Module:
    """The U-Net of a trial, its encoder loaded from the source checkpoint and frozen if asked."""
    source = trial.source
    model = create_unet(
        source.encoder,
        len(trial.data.class_names),
        channels,
        source_weights(source),
        source.path or "random init",
    )
    if trial.mode == "frozen":
        model.encoder.requires_grad_(False)
    return model


def build_run(
    trial: FinetuneTrial, precision: Precision, splits: Splits, distribution: Distribution | None = None
) -> FinetuningRun:
    """Data, model, optimizer and schedule of a trial, seeded by ``finetune.seed``.

    Each worker of a data-parallel trial loads its share of every global batch
    of ``finetune.batch_size`` (see :class:`~trainables.distributed.GlobalBatchSampler`).
    """
    distribution = distribution or Distribution()
    settings, data = trial.finetune, trial.data
    seed_everything(settings.seed)
    train_parts = load_split(splits.train, split="train", evaluation=False, source=data.root)
    val_parts = load_split(splits.val, split="val", evaluation=True, source=data.root)
    channels = train_parts[0].arrays.channels
    mean, std = input_statistics(NORMALIZATIONS[trial.source.normalize], channels)
    dataset = SegmentationDataset(
        train_parts, train_transform(data.image_size, data.resize, data.augment, settings.seed), mean, std
    )
    generator = torch.Generator()
    sampler = GlobalBatchSampler(
        len(dataset), settings.batch_size, distribution.rank, distribution.world, generator
    )
    loader = DataLoader(
        dataset,
        batch_size=sampler.share,
        sampler=sampler,
        num_workers=data.num_workers,
        collate_fn=_collate,
        generator=generator,
        pin_memory=precision.device.type == "cuda",
    )
    updates = (
        len(loader)
        if settings.train_batches_per_epoch is None
        else min(len(loader), settings.train_batches_per_epoch)
    )
    if updates < 1:
        raise DataError(
            f"the train split of {data.root} holds {len(dataset)} samples, fewer than one batch of "
            f"{settings.batch_size}: lower finetune.batch_size"
        )
    model = distribution.wrap(precision.prepare(build_model(trial, channels)))
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    total = settings.epochs * updates
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, total) / total) ** settings.poly_power
    )
    return FinetuningRun(
        trial,
        precision,
        model,
        optimizer,
        schedule,
        precision.grad_scaler(),
        loader,
        val_parts,
        mean,
        std,
        updates,
        _loss(settings.loss),
        distribution,
    )


def run_epoch(run: FinetuningRun, epoch: int) -> dict[str, Any]:
    """Train one epoch and validate on whole validation cases."""
    started = time.perf_counter()
    assert run.loader.generator is not None
    run.loader.generator.manual_seed(run.trial.finetune.seed * 1_000_003 + epoch)
    metrics: dict[str, Any] = {"epoch": epoch}
    metrics.update(
        train_epoch(
            run.model,
            run.loader,
            run.loss,
            run.optimizer,
            run.scaler,
            run.precision,
            accumulation_steps=1,
            updates=run.updates_per_epoch,
            on_update=run.schedule.step,
            train_mode=run.train_mode,
            on_loss=run.record_step_loss,
        )
    )
    metrics["train_loss"] = run.distribution.mean(torch.tensor(metrics["train_loss"]))
    metrics["lr"] = run.optimizer.param_groups[0]["lr"]
    if not run.distribution.is_main:  # validation, records and checkpoints are the main worker's
        return metrics
    data = run.trial.data
    _, summary = evaluate_parts(
        run.module,
        run.val_parts,
        data.class_names,
        run.precision,
        size=data.image_size,
        resize=data.resize,
        mean=run.mean,
        std=run.std,
        batch_size=run.trial.finetune.eval_batch_size,
    )
    metrics.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    metrics["epoch_time_s"] = time.perf_counter() - started
    return metrics


def write_history(folder: Path, history: list[dict[str, Any]], labels: dict[str, Any]) -> None:
    """The trial's own per-epoch record (rewritten whole, atomically, so resumes never duplicate rows)."""
    payload = json.dumps({**labels, "history": history}).encode()
    atomic_write(folder / HISTORY_FILE, lambda stream: stream.write(payload))


def run_finetuning(
    trial: FinetuneTrial,
    *,
    report: Reporter,
    restore_state: dict[str, Any] | None = None,
    device: str | None = None,
    num_threads: int | None = None,
    labels: dict[str, Any] | None = None,
    record_dir: Path | None = None,
    distribution: Distribution | None = None,
) -> None:
    """Train until ``finetune.epochs``, reporting validation metrics and a checkpoint every epoch.

    In a data-parallel trial every worker runs this; only the main one
    validates, writes ``history.json`` and checkpoints (the others report
    their averaged training loss without a checkpoint).
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    settings = trial.finetune
    precision = Precision.choose(device or settings.device, settings.amp, settings.channels_last)
    if precision.device.type == "cuda" and 0 < trial.gpus_per_worker < 1:
        # a fraction of a GPU: stay within it, so trials sharing the card do not starve each other
        torch.cuda.set_per_process_memory_fraction(trial.gpus_per_worker)
    run = build_run(trial, precision, trial_splits(trial), distribution)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    if restore_state is not None:
        run.restore(restore_state)
        history, start_epoch = list(restore_state["history"]), int(restore_state["epoch"]) + 1
    record = {
        **(labels or {}),
        "metric": "dice_mean",
        "mode": "max",
        "split_mode": trial.data.split.mode,
        "config": TypeAdapter(FinetuneTrial).dump_python(trial, mode="json"),
    }
    for epoch in range(start_epoch, settings.epochs + 1):
        metrics = run_epoch(run, epoch)
        if not run.distribution.is_main:
            report(metrics, None)
            continue
        # the running best: what a searcher (Optuna) optimises, whatever the last epoch did
        metrics["dice_mean_best"] = max(
            [row["dice_mean"] for row in history] + [metrics["dice_mean"]],
            key=lambda v: -math.inf if math.isnan(v) else v,
        )
        history.append({k: v for k, v in metrics.items() if k not in TIMING_METRICS})
        if record_dir is not None:
            write_history(record_dir, history, {**record, "step_losses": run.step_losses})
        with tempfile.TemporaryDirectory(prefix="medseg-ckpt-") as checkpoint_dir:
            save_training_state(checkpoint_dir, run.state(epoch, history))
            write_record(checkpoint_dir, {"epoch": epoch, **record, "history": history})
            report(metrics, Path(checkpoint_dir))
