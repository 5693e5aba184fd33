"""The generic medical segmentation reader (image side): 2D image files and NIfTI volumes.

Generic layout (the nnU-Net convention most medical-imaging groups know)::

    <root>/imagesTr/<case>.<ext>   training images
    <root>/labelsTr/<case>.<ext>   their masks / label volumes (same file name)
    <root>/imagesTs/, labelsTs/    optional test split

``<ext>`` is one of .png .jpg .jpeg .bmp .tif .tiff .npy (one 2D image per
case, grey or RGB) or .nii .nii.gz (one 3D volume per case, sliced into 2D
images along ``slice_axis`` after reorientation to the closest canonical RAS
orientation, so axis 2 is axial for every volume).

Intensities become float32 in [0, 1]: 8-bit images are divided by 255; any
other image (16-bit, float, every NIfTI volume) is clipped to its own 0.5th and
99.5th percentiles (per case: the whole volume) and scaled. Constant slices
(air above the head, padding) carry no information and are skipped when
sampling target images.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from trainables.errors import DataError

VOLUME_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
SPLIT_FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}


@dataclass(frozen=True)
class SegmentationCase:
    """One case: a 2D image or a 3D volume, with its label file when present."""

    case_id: str
    image_path: Path
    label_path: Path | None

    @property
    def is_volume(self) -> bool:
        return self.image_path.name.lower().endswith(VOLUME_SUFFIXES)


def _split_suffix(name: str) -> tuple[str, str] | None:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES + IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], suffix
    return None


def _files_by_case(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        parts = _split_suffix(entry.name) if entry.is_file() and not entry.name.startswith(".") else None
        if parts is None:
            continue
        case_id = parts[0]
        if case_id in found:
            raise DataError(
                f"case {case_id!r} appears twice in {folder}: {found[case_id].name} and {entry.name}"
            )
        found[case_id] = Path(entry.path)
    return found


def list_cases(root: str | os.PathLike[str], split: str = "train") -> list[SegmentationCase]:
    """The cases of one split of a generic-layout set, sorted by case id."""
    images_name, labels_name = SPLIT_FOLDERS[split]
    root = Path(root)
    images_dir = root / images_name
    if not root.is_dir():
        raise DataError(f"segmentation set {root} does not exist")
    if not images_dir.is_dir():
        raise DataError(
            f"segmentation set {root} has no {images_name}/ folder: put images in "
            f"{root}/{images_name}/<case>.<ext> and masks in {root}/{labels_name}/<case>.<ext>"
        )
    images = _files_by_case(images_dir)
    if not images:
        raise DataError(
            f"{images_dir} holds no images (supported: {', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)})"
        )
    labels_dir = root / labels_name
    labels = _files_by_case(labels_dir) if labels_dir.is_dir() else {}
    return [SegmentationCase(case_id, path, labels.get(case_id)) for case_id, path in sorted(images.items())]


def _scale_to_unit(array: np.ndarray) -> np.ndarray:
    """8-bit: divide by 255; anything else: clip to the 0.5/99.5 percentiles and scale to [0, 1]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    low, high = np.percentile(array, [0.5, 99.5])
    if high <= low:
        return np.zeros_like(array)
    return np.clip((array - low) / (high - low), 0.0, 1.0)


def read_image_file(path: Path) -> np.ndarray:
    """A 2D image file as its raw array: H x W or H x W x C."""
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
        array = array[..., :3]  # drop alpha
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise DataError(f"image {path} has shape {array.shape}: expected H x W or H x W x 3")
    return array


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume's data (closest canonical orientation) as float32 X x Y x Z."""
    try:
        volume = nib.as_closest_canonical(nib.load(path))
        data = np.asarray(volume.dataobj, dtype=np.float32)
    except Exception as exc:
        raise DataError(f"unreadable NIfTI volume {path} ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"volume {path} has shape {data.shape}: expected a 3D volume")
    return data


def volume_depth(path: Path, slice_axis: int) -> int:
    """Number of 2D slices along ``slice_axis``, from the header alone."""
    try:
        image = nib.load(path)
        shape = nib.as_closest_canonical(image).shape
    except Exception as exc:
        raise DataError(f"unreadable NIfTI volume {path} ({type(exc).__name__}: {exc})") from None
    return int(shape[slice_axis])


def count_images(cases: list[SegmentationCase], slice_axis: int) -> int:
    """How many 2D images the cases hold (slices of volumes counted, blank ones included)."""
    return sum(volume_depth(c.image_path, slice_axis) if c.is_volume else 1 for c in cases)


def _case_images(case: SegmentationCase, slice_axis: int) -> list[np.ndarray]:
    """All 2D images of a case in [0, 1]; blank (constant) slices become empty arrays."""
    if not case.is_volume:
        return [_scale_to_unit(read_image_file(case.image_path))]
    volume = _scale_to_unit(read_volume(case.image_path))
    slices = np.moveaxis(volume, slice_axis, 0)
    return [s if s.max() > s.min() else np.empty(0, np.float32) for s in slices]


def _to_rgb_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.unsqueeze(0).expand(3, -1, -1)
    resized = torch.nn.functional.interpolate(
        tensor.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp(0.0, 1.0)


def sample_target_images(
    root: str | os.PathLike[str], *, n_images: int, seed: int, size: int, slice_axis: int = 2
) -> torch.Tensor:
    """N x 3 x size x size images in [0, 1] from the training split, drawn once with ``seed``.

    The order is the seeded random order of the draw (the score's negative
    pairing is by position). Grey images are repeated to 3 channels; images are
    resized to size x size (bilinear, antialiased). With fewer than
    ``n_images`` non-blank images all are used, rounded down to an even count,
    with a warning; fewer than 2 raise :class:`DataError`.
    """
    cases = list_cases(root, "train")
    refs = [
        (case_index, slice_index)
        for case_index, case in enumerate(cases)
        for slice_index in range(volume_depth(case.image_path, slice_axis) if case.is_volume else 1)
    ]
    order = np.random.default_rng(seed).permutation(len(refs))
    chosen: list[torch.Tensor] = []
    position = 0
    while len(chosen) < n_images and position < len(order):
        # read each case of this window once; blank slices are replaced from the next window
        window = [refs[i] for i in order[position : position + n_images - len(chosen)]]
        position += len(window)
        by_case: dict[int, list[int]] = defaultdict(list)
        for case_index, slice_index in window:
            by_case[case_index].append(slice_index)
        loaded = {c: _case_images(cases[c], slice_axis) for c in by_case}
        for case_index, slice_index in window:
            image = loaded[case_index][slice_index]
            if image.size:
                chosen.append(_to_rgb_tensor(image, size))
    if len(chosen) < 2:
        raise DataError(
            f"target set {root} has {len(chosen)} usable image(s): the robustness score needs at "
            "least 2; add images to imagesTr/ or choose another target set"
        )
    if len(chosen) < n_images:
        usable = len(chosen) - len(chosen) % 2
        warnings.warn(
            f"target set {root} has only {len(chosen)} usable images (asked for {n_images}); using {usable}",
            stacklevel=2,
        )
        chosen = chosen[:usable]
    return torch.stack(chosen)
