"""Training and evaluation loops shared by the pretraining and downstream stages.

The loops know nothing about the task: a stage passes a ``compute_loss``
function that turns a batch into a loss. They handle what both stages need:
gradient accumulation, mixed precision with a gradient scaler, channels_last,
a per-update learning-rate schedule and an optional cap on batches per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Precision:
    """Where and how a model computes: device, autocast dtype (None: full precision), memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def choose(cls, device: str = "auto", amp: str = "auto", channels_last: bool = True) -> Precision:
        """CUDA when available (or asked); bf16 autocast where supported, else fp16; CPU runs as is."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_device = torch.device(device)
        if torch_device.type != "cuda":
            return cls(torch_device)
        dtype = None
        if amp == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(torch_device, dtype, channels_last)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is active only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)


#: compute_loss(model, images, targets) -> loss averaged over the batch
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def train_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]],
    compute_loss: LossFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    *,
    accumulation_steps: int,
    updates: int,
    on_update: Callable[[], None],
    train_mode: Callable[[nn.Module], object] = nn.Module.train,
    on_loss: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Run ``updates`` optimizer updates of ``accumulation_steps`` micro-batches each.

    ``batches`` yields (images, targets, skipped_count); micro-batches beyond
    ``updates * accumulation_steps`` are not read, so every update sees the
    same number of micro-batches. ``on_update`` runs after each update (the
    learning-rate schedule). ``train_mode`` puts the model in training mode
    (a stage may keep parts of it in eval mode); ``on_loss`` sees every
    micro-batch's loss (detached). Returns the mean loss,
    throughput and the number of skipped (unreadable) items.
    """
    train_mode(model)
    optimizer.zero_grad(set_to_none=True)
    total_loss, micro_batches, images_seen, skipped = 0.0, 0, 0, 0
    started = time.perf_counter()
    iterator = iter(batches)
    for _ in range(updates * accumulation_steps):
        images, targets, bad = next(iterator)
        skipped += bad
        micro_batches += 1
        if images.numel() == 0:
            continue
        images, targets = precision.to_device(images), targets.to(precision.device, non_blocking=True)
        with precision.autocast():
            loss = compute_loss(model, images, targets)
        scaler.scale(loss / accumulation_steps).backward()
        total_loss += float(loss.detach())
        if on_loss is not None:
            on_loss(loss.detach())
        images_seen += images.shape[0]
        if micro_batches % accumulation_steps == 0:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            on_update()
    elapsed = time.perf_counter() - started
    return {
        "train_loss": total_loss / max(micro_batches, 1),
        "train_images_per_s": images_seen / elapsed if elapsed > 0 else 0.0,
        "train_skipped_images": float(skipped),
    }


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, int]],
    precision: Precision,
    *,
    num_classes: int,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (top-k capped at the class count), in [0, 1]."""
    model.eval()
    k = min(5, num_classes)
    loss_sum, correct1, correct_k, count, skipped = 0.0, 0.0, 0.0, 0, 0
    for index, (images, targets, bad) in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        skipped += bad
        if images.numel() == 0:
            continue
        images, targets = precision.to_device(images), targets.to(precision.device)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets.unsqueeze(1))
        correct1 += float(hits[:, 0].sum())
        correct_k += float(hits.any(dim=1).sum())
        count += targets.shape[0]
    denominator = max(count, 1)
    return {
        "val_loss": loss_sum / denominator,
        "val_top1": correct1 / denominator,
        "val_top5": correct_k / denominator,
        "val_skipped_images": float(skipped),
    }
