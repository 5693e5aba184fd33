"""The command line: --help, --version, one-line errors for bad input, and the score command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from search import __version__
from search.cli import main


def _fails(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medseg-search: error: ") and "\n" not in err, err
    return err


def test_version_and_help_of_every_subcommand() -> None:
    run = [sys.executable, "-m", "search"]
    version = subprocess.run(run + ["--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"medseg-search {__version__}"
    for command in ("pretrain", "score"):
        shown = subprocess.run(run + [command, "--help"], capture_output=True, text=True, check=True).stdout
        assert f"usage: medseg-search {command}" in shown


def _flat_val(root: Path) -> Path:
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    (root / "train" / "n01").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "train" / "n01" / "a.JPEG")
    Image.new("RGB", (8, 8)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    return root


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pretrain__lrr": 1.0}, r"unknown key 'pretrain.lrr' \(did you mean 'lr'"),
        ({"pretrain__epochs": "two"}, r"pretrain.epochs='two': Input should be a valid integer"),
        (
            {"classification__root": "/nonexistent/imagenet"},
            r"data folder /nonexistent/imagenet/train does not exist",
        ),
        ({"pretrain__model": "resnet10"}, r"unknown timm model 'resnet10'; did you mean"),
        (
            {"pretrain__model": "vit_tiny_patch16_224"},
            r"cannot be wrapped in a segmentation_models_pytorch U-Net",
        ),
        (
            {"storage_path": "/dev/null/results"},
            r"storage_path /dev/null/results is not writable.*--set storage_path=",
        ),
    ],
)
def test_bad_pretrain_input_is_one_line_before_anything_starts(capsys, changes, message, make_config) -> None:
    err = _fails(capsys, ["pretrain", "--config", str(make_config(**changes))])
    assert __import__("re").search(message, err), err


def test_flat_and_empty_data_folders_are_refused(tmp_path, demo_data, capsys, make_config) -> None:
    flat = _flat_val(tmp_path / "flat")
    err = _fails(capsys, ["pretrain", "--config", str(make_config(classification__root=str(flat)))])
    assert "no class folders" in err and "valprep.sh" in err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    err = _fails(
        capsys,
        [
            "pretrain",
            "--config",
            str(make_config(classification__root=str(tmp_path / "empty"))),
        ],
    )
    assert "is empty" in err


def test_target_with_fewer_than_two_images_is_refused(tmp_path, demo_data, capsys, make_config) -> None:
    single = tmp_path / "single" / "imagesTr"
    single.mkdir(parents=True)
    from PIL import Image

    Image.new("L", (16, 16), 3).save(single / "only.png")
    targets = [{"name": "one", "root": str(single.parent)}]
    err = _fails(capsys, ["pretrain", "--config", str(make_config(score__targets=targets))])
    assert "holds 1 image(s): the robustness score needs at least 2" in err


def test_initial_checkpoint_that_does_not_fit_is_refused(tmp_path, demo_data, capsys, make_config) -> None:
    wrong = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), wrong)
    err = _fails(
        capsys,
        ["pretrain", "--config", str(make_config(pretrain__init_checkpoint=str(wrong)))],
    )
    assert "does not fit encoder 'resnet10t'" in err and "missing:" in err


def test_score_command_prints_json_per_checkpoint_and_agrees_across_formats(
    tmp_path, demo_data, capsys
) -> None:
    torch.manual_seed(0)
    state = timm.create_model("resnet10t", num_classes=7).state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "ours.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "plain.safetensors")
    argv = [
        "score",
        "--model",
        "resnet10t",
        "--checkpoint",
        str(tmp_path / "ours.pt"),
        str(tmp_path / "plain.safetensors"),
        "--target",
        str(demo_data["brain"]),
        "--n-images",
        "8",
        "--image-size",
        "32",
        "--json",
    ]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [set(r) for r in rows] == [
        {"checkpoint", "robustness", "robustness_pos", "robustness_neg", "n_images"}
    ] * 2
    assert rows[0]["robustness"] == rows[1]["robustness"]
    assert rows[0]["n_images"] == 8 and 0 <= rows[0]["robustness"] <= 2.5


def test_score_refuses_a_checkpoint_of_another_encoder(tmp_path, demo_data, capsys) -> None:
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    err = _fails(
        capsys,
        [
            "score",
            "--model",
            "resnet10t",
            "--checkpoint",
            str(tmp_path / "r18.pth"),
            "--target",
            str(demo_data["brain"]),
            "--n-images",
            "4",
            "--image-size",
            "32",
        ],
    )
    assert "does not fit encoder 'resnet10t'" in err


def test_score_command_prints_a_table_by_default(tmp_path, demo_data, capsys) -> None:
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "a.pth")
    argv = [
        "score",
        "--model",
        "resnet10t",
        "--checkpoint",
        str(tmp_path / "a.pth"),
        "--target",
        str(demo_data["brain"]),
        "--n-images",
        "4",
        "--image-size",
        "32",
        "--distance",
        "mse",
    ]
    assert main(argv) == 0
    header, row = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["robustness", "pos", "neg", "images", "checkpoint"]
    assert row.split()[-1] == str(tmp_path / "a.pth") and row.split()[3] == "4"
