"""Classification data in ImageNet's folder layout, read with timm's transforms.

Layout: ``<root>/<train_dir>/<class>/*.JPEG`` and ``<root>/<val_dir>/<class>/*``
(any image extension torchvision knows). Class indices come from the sorted
class folders of the training split and are reused for validation, so a
validation split that lacks some classes still lines up. A flat validation
folder (as ImageNet ships it) is refused with instructions.

Unreadable images are skipped and counted (``on_bad_image: skip``; each batch
carries the count) or raise :class:`DataError` naming the file (``error``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from trainables.distributed import GlobalBatchSampler
from trainables.errors import DataError

_LAYOUT = "<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG"


@dataclass(frozen=True)
class FolderIndex:
    """The files of one split: (path, class index) pairs, and the class names by index."""

    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def class_folders(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """The sorted class folder names of one split; refuses a missing, empty or flat folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist: expected the ImageNet layout {_LAYOUT}")
    entries = list(os.scandir(folder))
    classes = tuple(sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")))
    if classes:
        return classes
    loose = sum(1 for e in entries if e.is_file() and _is_image(e.name))
    if loose:
        raise DataError(
            f"{folder} holds {loose} images but no class folders (ImageNet's val ships flat): "
            f"move each image into {folder}/<wnid>/ using the devkit labels, for example with "
            "the valprep.sh script of the PyTorch ImageNet example"
        )
    raise DataError(f"data folder {folder} is empty: expected class folders, as in {_LAYOUT}")


def check_split(folder: str | os.PathLike[str], classes: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Cheap pre-flight check of a split (no full file listing); returns its class folders.

    Refuses a missing, empty or flat folder, class names the training split
    lacks, and a first class folder without images.
    """
    found = class_folders(folder)
    _require_known_classes(Path(folder), found, classes)
    first = Path(folder) / found[0]
    if not any(e.is_file() and _is_image(e.name) for e in os.scandir(first)):
        raise DataError(f"class folder {first} holds no images (extensions: {', '.join(IMG_EXTENSIONS)})")
    return found


def _require_known_classes(folder: Path, found: tuple[str, ...], classes: tuple[str, ...] | None) -> None:
    unknown = sorted(set(found) - set(classes or found))
    if unknown:
        raise DataError(
            f"{folder} has class folders that the training split lacks: {unknown[:5]}; "
            "both splits must use the same class names"
        )


def index_split(folder: str | os.PathLike[str], classes: tuple[str, ...] | None = None) -> FolderIndex:
    """Index one split folder; ``classes`` (from the training split) fixes the class indices."""
    found = class_folders(folder)
    _require_known_classes(Path(folder), found, classes)
    classes = classes or found
    class_to_idx = {name: index for index, name in enumerate(classes)}
    samples = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise DataError(
            f"no images in the class folders of {folder} (extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    return FolderIndex(classes=classes, samples=tuple(samples))


class ImageFolderDataset(Dataset[Any]):
    """(image tensor, class index) items; ``None`` for an unreadable file when skipping."""

    def __init__(self, samples: tuple[tuple[str, int], ...], transform: Any, on_bad_image: str) -> None:
        self.samples, self.transform, self.on_bad_image = samples, transform, on_bad_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, target = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's decode errors
            if self.on_bad_image == "error":
                raise DataError(
                    f"unreadable image {path} ({exc}); remove or replace it, "
                    "or set classification.on_bad_image=skip to skip and count such files"
                ) from None
            return None
        return self.transform(rgb), target


def collate_skipping_bad(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Collate the readable items; the third element counts the skipped ones."""
    good = [item for item in batch if item is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped


def build_transforms(
    *,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rrc_scale: tuple[float, float],
    hflip: float,
    randaugment: str | None,
    random_erasing: float,
) -> tuple[Any, Any]:
    """timm's training transform (RandomResizedCrop, flip, RandAugment, RandomErasing) and eval transform."""
    train = create_transform(
        input_size=image_size,
        is_training=True,
        scale=rrc_scale,
        hflip=hflip,
        color_jitter=None,  # type: ignore[arg-type]  # neither recipe jitters colours
        auto_augment=randaugment,
        interpolation="bilinear",
        mean=mean,
        std=std,
        re_prob=random_erasing,
        re_mode="const",
    )
    evaluation = create_transform(
        input_size=image_size, is_training=False, interpolation="bilinear", mean=mean, std=std, crop_pct=0.875
    )
    return train, evaluation


def make_loader(
    dataset: ImageFolderDataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int,
    pin_memory: bool,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader[Any]:
    """A loader whose order and worker seeds come from ``loader.generator``.

    Re-seed the generator at the start of every epoch (``seed_epoch``) and the
    shuffle and augmentation draws of that epoch are the same after a resume.
    Workers are not persistent for that reason: their RNG cannot be checkpointed.
    ``shard=(rank, world)`` of a data-parallel trial: a training loader yields
    this worker's ``batch_size`` share of every global batch of ``batch_size *
    world``, in the order a single process would shuffle.
    """
    generator = torch.Generator()
    rank, world = shard
    sampler = (
        GlobalBatchSampler(len(dataset), batch_size * world, rank, world, generator)
        if train and world > 1
        else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,  # Mixup/CutMix needs even, full batches
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_skipping_bad,
        generator=generator,
        persistent_workers=False,
    )


def seed_epoch(loader: DataLoader[Any], seed: int, epoch: int) -> None:
    """Fix the shuffle order and worker seeds of ``loader`` for one epoch."""
    assert loader.generator is not None  # made by make_loader
    loader.generator.manual_seed(seed * 1_000_003 + epoch)
