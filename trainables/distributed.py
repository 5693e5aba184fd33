"""What a data-parallel trial needs from torch.distributed, with a single-process default (no Ray).

:class:`GlobalBatchSampler` shuffles exactly as a single process would and
hands every worker its contiguous share of each global batch, so a trial
sees the same global batches whatever its number of workers: with a loss that
is a mean over samples (cross-entropy) and no batch statistics (BatchNorm
frozen), data-parallel training follows the single-process run step by step.
Dice loss is computed per worker's share of the batch, so there it does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[int]):
    """Indices of this worker's share of every full global batch of a seeded permutation."""

    def __init__(
        self, size: int, global_batch: int, rank: int, world: int, generator: torch.Generator
    ) -> None:
        if global_batch % world:
            raise ValueError(f"batch size {global_batch} must be a multiple of the {world} workers")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.generator = generator
        self.share = global_batch // world

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.size, generator=self.generator).tolist()
        for batch in range(self.size // self.global_batch):
            start = batch * self.global_batch + self.rank * self.share
            yield from order[start : start + self.share]

    def __len__(self) -> int:
        return (self.size // self.global_batch) * self.share


def _identity(model: nn.Module) -> nn.Module:
    return model


def _local_mean(value: torch.Tensor) -> float:
    return float(value)


def all_reduce_mean(value: torch.Tensor) -> float:
    """The mean of ``value`` over all workers of the process group."""
    import torch.distributed as dist

    tensor = value.detach().float().reshape(1).clone()
    dist.all_reduce(tensor)
    return float(tensor) / dist.get_world_size()


@dataclass(frozen=True)
class Distribution:
    """This process's place in a trial: rank, world size, how to wrap the model and average values."""

    rank: int = 0
    world: int = 1
    wrap: Callable[[nn.Module], nn.Module] = field(default=_identity)
    mean: Callable[[torch.Tensor], float] = field(default=_local_mean)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, nn.Module) else model
