"""The segmentation reader: the paper's three sets in their official layouts, splits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from trainables.data.formats import find_cases
from trainables.data.splits import make_splits
from trainables.errors import DataError


def _nifti(path: Path, data: np.ndarray, zooms: tuple[float, float, float] = (1.5, 1.25, 10.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    image.header.set_zooms(zooms + (1.0,) * (data.ndim - 3))
    nib.save(image, path)


def _acdc(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, patients in (("training", (1, 2, 3)), ("testing", (101,))):
        for number in patients:
            folder = root / split / f"patient{number:03d}"
            folder.mkdir(parents=True)
            (folder / "Info.cfg").write_text("ED: 1\nES: 3\nGroup: DCM\nHeight: 180\nNbFrame: 5\n")
            for frame in (1, 3):
                stem = folder / f"patient{number:03d}_frame{frame:02d}"
                _nifti(stem.with_name(stem.name + ".nii.gz"), rng.random((16, 12, 4)).astype(np.float32))
                _nifti(
                    stem.with_name(stem.name + "_gt.nii.gz"), rng.integers(0, 4, (16, 12, 4)).astype(np.uint8)
                )
            _nifti(folder / f"patient{number:03d}_4d.nii.gz", rng.random((16, 12, 4, 5)).astype(np.float32))
    return root


def test_acdc_gives_ed_and_es_frames_grouped_by_patient_with_their_spacing(tmp_path: Path) -> None:
    root = _acdc(tmp_path / "ACDC")
    train = find_cases("acdc", root, "train", num_classes=4)
    assert [c.case_id for c in train] == [f"patient00{p}_frame0{f}" for p in (1, 2, 3) for f in (1, 3)]
    assert {c.group for c in train} == {"patient001", "patient002", "patient003"}
    arrays = train[0].load()
    assert arrays.images.shape == (4, 16, 12) and arrays.masks is not None and arrays.masks.max() <= 3
    assert arrays.spacing == (1.5, 1.25, 10.0)  # rows, columns, between slices
    assert [c.case_id for c in find_cases("acdc", root, "test", num_classes=4)] == [
        "patient101_frame01",
        "patient101_frame03",
    ]
    splits = make_splits(train, find_cases("acdc", root, "test"), val_fraction=0.34, seed=0)
    val_patients = {p.case.group for p in splits.val}
    assert len(val_patients) == 1 and not val_patients & {p.case.group for p in splits.train}


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_covid_qu_uses_train_and_val_for_training_and_binarises_masks(tmp_path: Path) -> None:
    base = tmp_path / "COVID-QU-Ex" / "Infection Segmentation Data"
    for part in ("Train", "Val", "Test"):
        for group in ("COVID-19", "Non-COVID"):
            image = np.full((32, 32), 90, np.uint8)
            mask = np.zeros((32, 32), np.uint8)
            mask[4:12, 4:12] = 255
            _png(base / part / group / "images" / f"{part.lower()}_1.png", image)
            _png(base / part / group / "infection masks" / f"{part.lower()}_1.png", mask)
    root = tmp_path / "COVID-QU-Ex"
    train = find_cases("covid_qu", root, "train", num_classes=2)
    assert [c.case_id for c in train] == ["Train/train_1", "Val/val_1"]  # COVID-19 only, as the paper
    arrays = train[0].load()
    assert set(np.unique(arrays.masks)) == {0, 1} and int(arrays.masks.sum()) == 64
    assert [c.case_id for c in find_cases("covid_qu", root, "test")] == ["Test/test_1"]


def test_idrid_is_cut_into_the_papers_crops(tmp_path: Path) -> None:
    base = tmp_path / "IDRiD" / "A. Segmentation"
    image = np.full((400, 600, 3), 120, np.uint8)
    image[:, :300] = 0  # a black half: the crops wholly inside it are dropped
    mask = np.zeros((400, 600), np.uint8)
    mask[200:210, 300:310] = 255
    _png(base / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg", image)
    (base / "2. All Segmentation Groundtruths" / "a. Training Set" / "1. Microaneurysms").mkdir(parents=True)
    Image.fromarray(mask).save(
        base
        / "2. All Segmentation Groundtruths"
        / "a. Training Set"
        / "1. Microaneurysms"
        / "IDRiD_01_MA.tif"
    )
    (case,) = find_cases("idrid", tmp_path / "IDRiD", "train", num_classes=2)
    train = case.load()
    evaluation = case.for_evaluation().load()
    assert train.images.shape[1:] == (448, 448, 3) and evaluation.images.shape[1:] == (448, 448, 3)
    # 1120 x 2240 after the 96-px cut: 7 x 17 crops at stride 112, 2 x 5 without overlap, minus black ones
    assert 0 < len(train.images) < 7 * 17 and 0 < len(evaluation.images) < 2 * 5
    assert all(crop.mean() >= 0.01 for crop in train.images)
    assert train.masks is not None and set(np.unique(train.masks)) == {0, 1}


def _generic_2d(root: Path, count: int = 4, test: int = 0) -> Path:
    for folder, number in (("Tr", count), ("Ts", test)):
        for index in range(number):
            image = np.full((24, 24), 40 + index, np.uint8)
            mask = np.zeros((24, 24), np.uint8)
            mask[5:10, 5:10] = 1
            name = f"{'case' if folder == 'Tr' else 'test'}{index}.png"
            _png(root / f"images{folder}" / name, image)
            _png(root / f"labels{folder}" / name, mask)
    return root


def test_masks_of_another_size_or_with_undeclared_labels_are_refused_naming_the_file(tmp_path: Path) -> None:
    root = _generic_2d(tmp_path / "set")
    _png(root / "labelsTr" / "case1.png", np.zeros((20, 24), np.uint8))
    _png(root / "labelsTr" / "case2.png", np.full((24, 24), 7, np.uint8))
    cases = {c.case_id: c for c in find_cases("generic", root, "train", num_classes=2)}
    with pytest.raises(DataError, match=r"mask .*case1.png has size \(20, 24\) but its image has \(24, 24\)"):
        cases["case1"].load()
    with pytest.raises(
        DataError, match=r"mask .*case2.png holds label values \[7\] outside the 2 declared classes"
    ):
        cases["case2"].load()


def test_a_volume_without_its_label_volume_is_refused(tmp_path: Path) -> None:
    _nifti(tmp_path / "set" / "imagesTr" / "brain.nii.gz", np.ones((8, 8, 3), np.float32))
    (case,) = find_cases("generic", tmp_path / "set", "train", num_classes=2)
    with pytest.raises(DataError, match=r"volume .*brain.nii.gz has no label volume"):
        case.load()


def test_by_case_split_is_seeded_and_refuses_a_single_case(tmp_path: Path) -> None:
    cases = find_cases("generic", _generic_2d(tmp_path / "set", count=10, test=2), "train")
    test = find_cases("generic", tmp_path / "set", "test")
    first = make_splits(cases, test, val_fraction=0.2, seed=3)
    again = make_splits(cases, test, val_fraction=0.2, seed=3)
    other = make_splits(cases, test, val_fraction=0.2, seed=4)
    ids = lambda parts: sorted(p.case.case_id for p in parts)  # noqa: E731
    assert ids(first.val) == ids(again.val) and len(first.val) == 2
    assert ids(first.val) != ids(other.val)
    assert not set(ids(first.val)) & set(ids(first.train)) and ids(first.test) == ["test0", "test1"]
    with pytest.raises(DataError, match="use data.split.mode: slice_blocks"):
        make_splits(cases[:1], test)
    with pytest.raises(DataError, match="the test split of the set is empty"):
        make_splits(cases, [])


def test_split_files_refuse_a_case_in_two_splits_unknown_ids_and_empty_splits(tmp_path: Path) -> None:
    cases = find_cases("generic", _generic_2d(tmp_path / "set", count=6), "train")
    split_file = tmp_path / "split.json"

    def split(listing: dict) -> None:
        split_file.write_text(json.dumps(listing))
        make_splits(cases, [], split_file=str(split_file))

    with pytest.raises(DataError, match="case 'case2' of the set is in both the train and the test split"):
        split({"train": ["case0", "case1", "case2"], "val": ["case3"], "test": ["case2", "case4"]})
    with pytest.raises(DataError, match=r"case ids \['case9'\] of 'test' are not in the set"):
        split({"train": ["case0"], "test": ["case9"]})
    with pytest.raises(DataError, match="the val split of the set is empty"):
        split({"train": ["case0", "case1"], "val": [], "test": ["case5"]})
    split({"train": ["case0", "case1", "case2"], "test": ["case5"]})  # val carved from train


def test_slice_blocks_are_contiguous_and_skip_blank_slices(tmp_path: Path) -> None:
    data = np.zeros((8, 8, 12), np.float32)
    data[2:6, 2:6, 1:11] = np.arange(1, 11, dtype=np.float32)  # slices 0 and 11 are blank
    _nifti(tmp_path / "set" / "imagesTr" / "one.nii.gz", data)
    _nifti(tmp_path / "set" / "labelsTr" / "one.nii.gz", (data > 5).astype(np.uint8))
    cases = find_cases("generic", tmp_path / "set", "train", num_classes=2)
    splits = make_splits(cases, [], mode="slice_blocks", val_fraction=0.2, test_fraction=0.2)
    arrays = cases[0].load()
    blocks = {name: splits[name][0].select(arrays) for name in ("train", "val", "test")}
    raw = {name: [round(float(image.max()) * 10) for image in block.images] for name, block in blocks.items()}
    assert {name: len(v) for name, v in raw.items()} == {"train": 6, "val": 2, "test": 2}
    maxima = raw["train"] + raw["val"] + raw["test"]
    assert maxima == sorted(maxima) and len(set(maxima)) == 10  # contiguous, in slice order
    assert splits.mode == "slice_blocks"
