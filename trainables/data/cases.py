"""The medical segmentation reader: cases of 2D images or NIfTI volumes, with their masks.

A *case* is the unit a split never cuts (a 2D image, a volume, or a crop set
of one fundus photograph); its *group* (a patient) is what splits keep
together. Loading a case gives N 2D samples:

- images: float32 in [0, 1], N x H x W (grey) or N x H x W x 3 (RGB). 8-bit
  images are divided by 255; any other image (16-bit, float, every NIfTI
  volume) is clipped to its own 0.5th and 99.5th percentiles (a volume: over
  the whole volume) and scaled;
- masks: int64 class indices, N x H x W, checked against the declared classes;
- spacing: millimetres (rows, columns, between slices) for volumes, read from
  the NIfTI header; None for 2D files (metrics are then in pixels).

Volumes are reoriented to the closest canonical (RAS) orientation and sliced
along ``slice_axis`` (2 = axial for every volume).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from trainables.errors import DataError

VOLUME_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")

#: maps a raw mask array to class indices (binarising 0/255 masks, say)
LabelMap = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CaseArrays:
    """The 2D samples of one loaded case."""

    images: np.ndarray
    masks: np.ndarray | None
    spacing: tuple[float, float, float] | None = None

    @property
    def channels(self) -> int:
        return 3 if self.images.ndim == 4 else 1

    def nonblank(self) -> list[int]:
        """Indices of samples whose image is not constant (air, padding)."""
        flat = self.images.reshape(self.images.shape[0], -1)
        return [int(i) for i in np.flatnonzero(flat.max(axis=1) > flat.min(axis=1))]


class Case(ABC):
    """One case of a segmentation set."""

    case_id: str
    group: str

    @abstractmethod
    def count(self) -> int:
        """Number of 2D samples (cheap: headers only where possible)."""

    @abstractmethod
    def load(self, with_masks: bool = True) -> CaseArrays:
        """The case's samples; masks are required when ``with_masks``."""

    def for_evaluation(self) -> Case:
        """The case as evaluation sees it (IDRiD tiles differently for training)."""
        return self


def scale_to_unit(array: np.ndarray) -> np.ndarray:
    """8-bit: divide by 255; anything else: clip to the 0.5/99.5 percentiles and scale to [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    low, high = np.percentile(array, [0.5, 99.5])
    if high <= low:
        return np.zeros_like(array)
    return np.clip((array - low) / (high - low), 0.0, 1.0)


def read_image_file(path: Path) -> np.ndarray:
    """A 2D image or mask file as its raw array: H x W or H x W x C (alpha dropped)."""
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as exc:
        raise DataError(f"unreadable image {path} ({type(exc).__name__}: {exc})") from None
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise DataError(f"image {path} has shape {array.shape}: expected H x W or H x W x 3")
    return array


def _canonical(path: Path) -> nib.spatialimages.SpatialImage:
    try:
        return nib.as_closest_canonical(nib.load(path))
    except Exception as exc:
        raise DataError(f"unreadable NIfTI volume {path} ({type(exc).__name__}: {exc})") from None


def read_volume(path: Path, slice_axis: int) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume as slices (N x H x W, float32) and its spacing (rows, columns, slices) in mm."""
    volume = _canonical(path)
    data = np.asarray(volume.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"volume {path} has shape {data.shape}: expected a 3D volume")
    zooms = tuple(float(z) for z in volume.header.get_zooms()[:3])
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    spacing = (zooms[in_plane[0]], zooms[in_plane[1]], zooms[slice_axis])
    return np.moveaxis(data, slice_axis, 0), spacing


def check_mask(
    mask: np.ndarray, num_classes: int | None, path: Path, image_shape: tuple[int, ...]
) -> np.ndarray:
    """Class indices of a mask; refuses a size different from the image's and unknown labels."""
    if mask.shape != image_shape:
        raise DataError(f"mask {path} has size {mask.shape} but its image has {image_shape}: they must match")
    if not np.issubdtype(mask.dtype, np.integer) and not np.all(np.equal(np.mod(mask, 1), 0)):
        raise DataError(f"mask {path} holds non-integer values: expected class indices")
    labels = mask.astype(np.int64)
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        found = sorted(int(v) for v in np.unique(labels) if v < 0 or v >= num_classes)
        raise DataError(
            f"mask {path} holds label values {found[:8]} outside the {num_classes} declared classes "
            f"(0 ... {num_classes - 1}): declare every class in data.classes"
        )
    return labels


@dataclass(frozen=True)
class FileCase(Case):
    """A 2D image file with its mask file (PNG, JPEG, TIFF, BMP or NumPy)."""

    case_id: str
    image_path: Path
    label_path: Path | None
    num_classes: int | None = None
    label_map: LabelMap | None = None
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.case_id)

    def count(self) -> int:
        return 1

    def load(self, with_masks: bool = True) -> CaseArrays:
        raw = read_image_file(self.image_path)
        image = scale_to_unit(raw)
        if not with_masks:
            return CaseArrays(image[None], None)
        if self.label_path is None:
            raise DataError(
                f"image {self.image_path} has no mask file beside it (expected in the labels folder)"
            )
        mask = read_image_file(self.label_path)
        if mask.ndim == 3:  # an RGB-saved mask: every channel holds the label
            mask = mask[..., 0]
        if self.label_map is not None:
            mask = self.label_map(mask)
        labels = check_mask(mask, self.num_classes, self.label_path, raw.shape[:2])
        return CaseArrays(image[None], labels[None])


@dataclass(frozen=True)
class VolumeCase(Case):
    """A NIfTI volume with its label volume, sliced along ``slice_axis``."""

    case_id: str
    image_path: Path
    label_path: Path | None
    slice_axis: int = 2
    num_classes: int | None = None
    group: str = ""

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.case_id)

    def count(self) -> int:
        return int(_canonical(self.image_path).shape[self.slice_axis])

    def load(self, with_masks: bool = True) -> CaseArrays:
        slices, spacing = read_volume(self.image_path, self.slice_axis)
        images = scale_to_unit(slices)
        if not with_masks:
            return CaseArrays(images, None, spacing)
        if self.label_path is None:
            raise DataError(f"volume {self.image_path} has no label volume (expected in the labels folder)")
        labels, _ = read_volume(self.label_path, self.slice_axis)
        masks = check_mask(labels, self.num_classes, self.label_path, slices.shape)
        return CaseArrays(images, masks, spacing)
