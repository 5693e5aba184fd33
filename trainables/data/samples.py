"""Training samples of a segmentation split: loaded parts, albumentations transforms, a torch Dataset.

Images are resampled bilinearly and masks with nearest neighbour only
(albumentations' ``mask_interpolation``), image and mask together. Training
takes ``image_size`` squares by resizing (``resize``) or by a random crop
(``crop``, as the paper's IDRiD recipe); ``augment: basic`` adds a small
affine jitter (scale 0.9-1.1, shift 5%, rotation 10 degrees) and brightness /
contrast 0.1, each with probability 0.5. No flips: left and right carry
anatomy. Inputs are normalised like the encoder's pretraining (grey images by
the mean of the three channel statistics, as the stem's RGB filters are summed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.data.cases import CaseArrays
from trainables.data.splits import Part
from trainables.errors import DataError


@dataclass(frozen=True)
class LoadedPart:
    """The samples of one case in one split."""

    case_id: str
    arrays: CaseArrays


def load_split(parts: Sequence[Part], *, split: str, evaluation: bool, source: str) -> list[LoadedPart]:
    """Load every part of a split (the evaluation view of each case for validation and test)."""
    loaded = []
    for part in parts:
        case = part.case.for_evaluation() if evaluation else part.case
        arrays = part.select(case.load())
        if len(arrays.images):
            loaded.append(LoadedPart(case.case_id, arrays))
    if not loaded:
        raise DataError(f"the {split} split of {source} holds no samples")
    channels = {p.arrays.channels for p in loaded}
    if len(channels) > 1:
        grey = next(p.case_id for p in loaded if p.arrays.channels == 1)
        raise DataError(
            f"{source} mixes grey and RGB images (case {grey!r} is grey): convert them to one kind"
        )
    return loaded


def input_statistics(
    mean_std: tuple[Sequence[float], Sequence[float]], channels: int
) -> tuple[list[float], list[float]]:
    """Normalisation of ``channels``-channel inputs from the encoder's RGB statistics."""
    mean, std = (list(v) for v in mean_std)
    if channels == 1:
        return [sum(mean) / 3], [sum(std) / 3]
    return mean, std


def train_transform(size: int, resize: str, augment: str, seed: int) -> Any:
    """The albumentations pipeline of training samples."""
    import albumentations as A
    import cv2

    linear, nearest = cv2.INTER_LINEAR, cv2.INTER_NEAREST
    steps: list[Any]
    if resize == "crop":
        steps = [
            A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT),
            A.RandomCrop(height=size, width=size),
        ]
    else:
        steps = [A.Resize(size, size, interpolation=linear, mask_interpolation=nearest)]
    if augment == "basic":
        steps += [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.05, 0.05),
                rotate=(-10, 10),
                interpolation=linear,
                mask_interpolation=nearest,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    return A.Compose(steps, seed=seed)


def to_input(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """N x H x W (grey) or N x H x W x 3 float images in [0, 1] as a normalised N x C x H x W tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    shape = (1, -1, 1, 1)
    return (tensor - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


class SegmentationDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image C x S x S, mask S x S) training pairs from loaded parts."""

    def __init__(
        self, parts: list[LoadedPart], transform: Any, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.parts, self.transform, self.mean, self.std = parts, transform, mean, std
        self.index = [(p, s) for p, part in enumerate(parts) for s in range(len(part.arrays.images))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        part, sample = self.index[item]
        arrays = self.parts[part].arrays
        assert arrays.masks is not None
        out = self.transform(image=arrays.images[sample], mask=arrays.masks[sample].astype(np.uint8))
        image = to_input(out["image"][None], self.mean, self.std)[0]
        return image, torch.from_numpy(np.asarray(out["mask"], dtype=np.int64))
