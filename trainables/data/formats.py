"""Segmentation set layouts: the generic one and the paper's three sets as distributed.

``find_cases(format, root, split, ...)`` lists the cases of the ``train`` or
``test`` split; ``FORMATS`` maps each format to its lister and default classes.

- ``generic``: ``imagesTr/<case>.<ext>`` with ``labelsTr/<case>.<ext>`` (and
  ``imagesTs``/``labelsTs``); 2D files or NIfTI volumes (see
  :mod:`trainables.data.cases`).
- ``acdc``: ``training/patientNNN/`` and ``testing/patientNNN/``; each patient
  gives two cases, its ED and ES frames (``patientNNN_frameFF.nii.gz`` with
  ``..._gt.nii.gz``, frame numbers from ``Info.cfg``), grouped by patient so
  a split never separates them. Classes: background, RV, myocardium, LV.
- ``covid_qu``: COVID-QU-Ex ``Infection Segmentation Data/{Train,Val,Test}/
  COVID-19/{images,infection masks}/<name>.png``; training = Train + Val, test =
  Test (as the paper); masks binarised (> 127).
- ``idrid``: IDRiD ``A. Segmentation/1. Original Images/{a. Training Set,
  b. Testing Set}/IDRiD_NN.jpg`` with ``2. All Segmentation Groundtruths/.../
  1. Microaneurysms/IDRiD_NN_MA.tif``; cut into crops as the paper did (see
  :class:`IdridCase`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.data.cases import (
    IMAGE_SUFFIXES,
    VOLUME_SUFFIXES,
    Case,
    CaseArrays,
    FileCase,
    VolumeCase,
    check_mask,
    read_image_file,
)
from trainables.errors import DataError

SPLITS = ("train", "test")


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
        if parts[0] in found:
            raise DataError(
                f"case {parts[0]!r} appears twice in {folder}: {found[parts[0]].name} and {entry.name}"
            )
        found[parts[0]] = Path(entry.path)
    return found


def _require_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise DataError(f"{what} {folder} does not exist")


def generic_cases(root: Path, split: str, slice_axis: int, num_classes: int | None) -> list[Case]:
    """``imagesTr``/``labelsTr`` (or ``imagesTs``/``labelsTs``), paired by file name."""
    images_name, labels_name = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}[split]
    _require_folder(root, "segmentation set")
    images_dir = root / images_name
    if not images_dir.is_dir():
        if split == "test":
            return []
        raise DataError(
            f"segmentation set {root} has no {images_name}/ folder: put images in "
            f"{root}/{images_name}/<case>.<ext> and masks in {root}/{labels_name}/<case>.<ext>"
        )
    images = _files_by_case(images_dir)
    if not images:
        raise DataError(
            f"{images_dir} holds no images (supported: {', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)})"
        )
    labels = _files_by_case(root / labels_name) if (root / labels_name).is_dir() else {}
    cases: list[Case] = []
    for case_id, path in sorted(images.items()):
        if path.name.lower().endswith(VOLUME_SUFFIXES):
            cases.append(VolumeCase(case_id, path, labels.get(case_id), slice_axis, num_classes))
        else:
            cases.append(FileCase(case_id, path, labels.get(case_id), num_classes))
    return cases


def _acdc_frames(info: Path) -> list[int]:
    try:
        fields = dict(line.split(":", 1) for line in info.read_text().splitlines() if ":" in line)
        return sorted({int(fields["ED"]), int(fields["ES"])})
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"ACDC file {info} lacks readable 'ED:' and 'ES:' lines ({exc})") from None


def acdc_cases(root: Path, split: str, slice_axis: int, num_classes: int | None) -> list[Case]:
    """ED and ES frames of every patient, grouped by patient."""
    folder = root / {"train": "training", "test": "testing"}[split]
    _require_folder(folder, "ACDC folder")
    cases: list[Case] = []
    for patient in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("patient")):
        for frame in _acdc_frames(patient / "Info.cfg"):
            image = patient / f"{patient.name}_frame{frame:02d}.nii.gz"
            label = image.with_name(f"{patient.name}_frame{frame:02d}_gt.nii.gz")
            if not image.exists():
                raise DataError(f"ACDC frame {image} named in {patient / 'Info.cfg'} does not exist")
            cases.append(
                VolumeCase(
                    f"{patient.name}_frame{frame:02d}",
                    image,
                    label if label.exists() else None,
                    slice_axis,
                    num_classes,
                    group=patient.name,
                )
            )
    if not cases:
        raise DataError(f"ACDC folder {folder} holds no patientNNN folders")
    return cases


def _binarise(mask: np.ndarray) -> np.ndarray:
    return (mask > 127).astype(np.int64) if mask.max(initial=0) > 1 else mask.astype(np.int64)


def covid_qu_cases(root: Path, split: str, slice_axis: int, num_classes: int | None) -> list[Case]:
    """COVID-19 chest X-rays with infection masks; Train + Val for training, Test for testing."""
    base = root / "Infection Segmentation Data"
    _require_folder(base, "COVID-QU-Ex folder")
    cases: list[Case] = []
    for part in {"train": ("Train", "Val"), "test": ("Test",)}[split]:
        folder = base / part / "COVID-19"
        _require_folder(folder / "images", "COVID-QU-Ex folder")
        masks = folder / "infection masks"
        for image in sorted((folder / "images").glob("*.png")):
            mask = masks / image.name
            cases.append(
                FileCase(
                    f"{part}/{image.stem}",
                    image,
                    mask if mask.exists() else None,
                    num_classes,
                    _binarise,
                    group=image.stem,
                )
            )
    return cases


@dataclass(frozen=True)
class IdridCase(Case):
    """One IDRiD fundus photograph cut into crops as the paper did.

    96 px are cut from every side, the rest resized to 1120 x 2240 (rows x
    columns; masks with nearest neighbour), and 448 x 448 crops are taken with
    stride 112 for training and without overlap for evaluation; crops whose
    mean intensity is below 0.01 are dropped. Training then takes a random
    224 crop of each (``data.resize: crop``); evaluation runs on whole 448
    crops, which the fully convolutional U-Net accepts.
    """

    case_id: str
    image_path: Path
    label_path: Path | None
    num_classes: int | None = None
    stride: int = 112
    group: str = ""
    border: int = 96
    size: tuple[int, int] = (1120, 2240)
    crop: int = 448

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.case_id)

    def for_evaluation(self) -> Case:
        return replace(self, stride=self.crop)

    def count(self) -> int:
        return self.load(with_masks=False).images.shape[0]

    def _prepare(self, array: np.ndarray, nearest: bool) -> np.ndarray:
        from PIL import Image

        b = self.border
        cut = array[b:-b, b:-b] if array.shape[0] > 2 * b and array.shape[1] > 2 * b else array
        resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(cut).resize((self.size[1], self.size[0]), resample))

    def load(self, with_masks: bool = True) -> CaseArrays:
        raw = read_image_file(self.image_path)
        image = self._prepare(raw, nearest=False).astype(np.float32) / 255.0
        mask = None
        if with_masks:
            if self.label_path is None:
                raise DataError(f"IDRiD image {self.image_path} has no microaneurysm mask (IDRiD_NN_MA.tif)")
            raw_mask = read_image_file(self.label_path)
            raw_mask = raw_mask[..., 0] if raw_mask.ndim == 3 else raw_mask
            labels = check_mask(
                (raw_mask > 0).astype(np.uint8), self.num_classes, self.label_path, raw.shape[:2]
            )
            mask = self._prepare(labels.astype(np.uint8), nearest=True).astype(np.int64)
        crops, masks = [], []
        for top in range(0, self.size[0] - self.crop + 1, self.stride):
            for left in range(0, self.size[1] - self.crop + 1, self.stride):
                window = (slice(top, top + self.crop), slice(left, left + self.crop))
                if image[window].mean() < 0.01:
                    continue
                crops.append(image[window])
                if mask is not None:
                    masks.append(mask[window])
        return CaseArrays(np.stack(crops), np.stack(masks) if mask is not None else None)


def idrid_cases(root: Path, split: str, slice_axis: int, num_classes: int | None) -> list[Case]:
    """Training or testing photographs with their microaneurysm masks."""
    part = {"train": "a. Training Set", "test": "b. Testing Set"}[split]
    images = root / "A. Segmentation" / "1. Original Images" / part
    masks = root / "A. Segmentation" / "2. All Segmentation Groundtruths" / part / "1. Microaneurysms"
    _require_folder(images, "IDRiD folder")
    stride = 112 if split == "train" else 448
    cases: list[Case] = []
    for image in sorted(images.glob("IDRiD_*.jpg")):
        mask = masks / f"{image.stem}_MA.tif"
        cases.append(IdridCase(image.stem, image, mask if mask.exists() else None, num_classes, stride))
    return cases


@dataclass(frozen=True)
class Format:
    """A layout: how to list its cases, and its classes (None: the config must declare them)."""

    find: Callable[[Path, str, int, int | None], list[Case]]
    classes: tuple[str, ...] | None


FORMATS: dict[str, Format] = {
    "generic": Format(generic_cases, None),
    "acdc": Format(acdc_cases, ("background", "rv", "myocardium", "lv")),
    "covid_qu": Format(covid_qu_cases, ("background", "infection")),
    "idrid": Format(idrid_cases, ("background", "microaneurysm")),
}


def find_cases(
    format_name: str,
    root: str | os.PathLike[str],
    split: str,
    slice_axis: int = 2,
    num_classes: int | None = None,
) -> list[Case]:
    """The cases of one split (``train`` or ``test``) of a set in ``format_name``'s layout."""
    if format_name not in FORMATS:
        raise KeyError(f"unknown segmentation format {format_name!r}; valid: {sorted(FORMATS)}")
    return FORMATS[format_name].find(Path(root), split, slice_axis, num_classes)
