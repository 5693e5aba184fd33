"""Readers: ImageNet-layout classification folders and the generic segmentation layout."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data.classification import (
    ImageFolderDataset,
    check_split,
    collate_skipping_bad,
    index_split,
)
from trainables.data.formats import find_cases
from trainables.data.targets import count_images, sample_target
from trainables.errors import DataError


def _png(path: Path, value: int = 128, size: int = 8, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    channels = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 255, channels, dtype=np.uint8), mode=mode).save(path)


@pytest.fixture
def imagenet_like(tmp_path: Path) -> Path:
    for split, count in (("train", 3), ("val", 1)):
        for wnid in ("n01440764", "n01443537"):
            for index in range(count):
                _png(tmp_path / split / wnid / f"{wnid}_{index}.JPEG", value=index)
    return tmp_path


def test_index_uses_the_training_class_order_for_val(imagenet_like: Path) -> None:
    train = index_split(imagenet_like / "train")
    (imagenet_like / "val" / "n01440764" / "n01440764_0.JPEG").unlink()
    val = index_split(imagenet_like / "val", classes=train.classes)
    assert train.classes == ("n01440764", "n01443537")
    assert len(train.samples) == 6
    assert [target for _, target in val.samples] == [1]  # only the second class is left in val


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: (root / "val").mkdir(parents=True), "is empty"),
        (lambda root: _png(root / "val" / "ILSVRC2012_val_00000001.JPEG"), "no class folders.*valprep.sh"),
        (lambda root: _png(root / "val" / "n09999999" / "x.JPEG"), "lacks: \\['n09999999'\\]"),
        (lambda root: (root / "val" / "n01440764").mkdir(parents=True), "holds no images"),
    ],
)
def test_bad_val_folders_are_refused_with_the_fix(tmp_path: Path, prepare, message: str) -> None:
    prepare(tmp_path)
    with pytest.raises(DataError, match=message):
        check_split(tmp_path / "val", classes=("n01440764",))


def test_unreadable_images_are_skipped_and_counted_or_refused(imagenet_like: Path) -> None:
    broken = imagenet_like / "train" / "n01440764" / "n01440764_1.JPEG"
    broken.write_bytes(b"\xff\xd8 truncated")
    samples = index_split(imagenet_like / "train").samples
    transform = lambda image: torch.from_numpy(np.array(image)).permute(2, 0, 1)  # noqa: E731
    skipping = ImageFolderDataset(samples, transform, "skip")
    images, targets, skipped = collate_skipping_bad([skipping[i] for i in range(len(samples))])
    assert (images.shape[0], skipped) == (5, 1)
    with pytest.raises(DataError, match=r"unreadable image .*n01440764_1.JPEG.*on_bad_image=skip"):
        [ImageFolderDataset(samples, transform, "error")[i] for i in range(len(samples))]


def _volume(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def test_volumes_are_sliced_and_blank_slices_skipped(tmp_path: Path) -> None:
    data = np.zeros((16, 16, 6), np.float32)
    data[4:12, 4:12, 1:5] = np.arange(1, 5, dtype=np.float32)  # slices 0 and 5 are blank
    _volume(tmp_path / "imagesTr" / "case1.nii.gz", data)
    _volume(tmp_path / "labelsTr" / "case1.nii.gz", (data > 0).astype(np.uint8))
    cases = find_cases("generic", tmp_path, "train")
    assert [c.case_id for c in cases] == ["case1"] and cases[0].label_path is not None
    assert count_images(cases) == 6
    with pytest.warns(UserWarning, match="only 4 usable images"):
        images = sample_target("generic", str(tmp_path), slice_axis=2, n_images=6, seed=0, size=8)
    assert images.shape == (4, 3, 8, 8)
    assert torch.equal(images[:, 0], images[:, 1])  # grey repeated to 3 channels
    assert float(images.amin()) >= 0.0 and float(images.amax()) <= 1.0


def test_sample_is_seeded_ordered_and_rounded_to_even(tmp_path: Path) -> None:
    for index in range(5):
        _png(tmp_path / "imagesTr" / f"img{index}.png", value=index * 40, size=12)
    _png(tmp_path / "imagesTr" / "rgb.png", value=7, size=12, mode="RGB")
    first = sample_target("generic", str(tmp_path), slice_axis=2, n_images=4, seed=1, size=8)
    again = sample_target("generic", str(tmp_path), slice_axis=2, n_images=4, seed=1, size=8)
    other = sample_target("generic", str(tmp_path), slice_axis=2, n_images=4, seed=2, size=8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    (tmp_path / "imagesTr" / "rgb.png").unlink()
    with pytest.warns(UserWarning, match="using 4"):
        assert sample_target("generic", str(tmp_path), slice_axis=2, n_images=8, seed=0, size=8).shape[0] == 4


def test_sixteen_bit_images_are_percentile_scaled(tmp_path: Path) -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 10).astype(np.uint16)
    np.save(tmp_path / "a.npy", ramp)
    (tmp_path / "imagesTr").mkdir()
    np.save(tmp_path / "imagesTr" / "a.npy", ramp)
    np.save(tmp_path / "imagesTr" / "b.npy", ramp[::-1].copy())
    images = sample_target("generic", str(tmp_path), slice_axis=2, n_images=2, seed=0, size=64)
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "has no imagesTr/ folder"),
        (lambda root: (root / "imagesTr").mkdir(parents=True), "holds no images"),
        (lambda root: _png(root / "imagesTr" / "only.png"), "has 1 usable image"),
    ],
)
def test_unusable_target_sets_are_refused(tmp_path: Path, prepare, message: str) -> None:
    root = tmp_path / "target"
    prepare(root)
    with pytest.raises(DataError, match=message):
        sample_target("generic", str(root), slice_axis=2, n_images=4, seed=0, size=8)
