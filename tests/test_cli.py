"""The command line: --help, --version, one-line errors for bad input, and the score command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from search import __version__
from search.cli import main


def _config(tmp_path: Path, demo_data: dict[str, Path], **changes: Any) -> Path:
    config: dict[str, Any] = {
        "name": "cli",
        "storage_path": str(tmp_path / "results"),
        "classification": {"root": str(demo_data["mnist"]), "num_workers": 0},
        "pretrain": {
            "model": "resnet10t",
            "epochs": 2,
            "image_size": 32,
            "batch_size": 16,
            "micro_batch_size": 8,
            "warmup_epochs": 1,
        },
        "score": {
            "targets": [{"name": "brain", "root": str(demo_data["brain"])}],
            "n_images": 8,
            "image_size": 32,
        },
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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
def test_bad_pretrain_input_is_one_line_before_anything_starts(
    tmp_path, demo_data, capsys, changes, message
) -> None:
    err = _fails(capsys, ["pretrain", "--config", str(_config(tmp_path, demo_data, **changes))])
    assert __import__("re").search(message, err), err


def test_flat_and_empty_data_folders_are_refused(tmp_path, demo_data, capsys) -> None:
    flat = _flat_val(tmp_path / "flat")
    err = _fails(
        capsys, ["pretrain", "--config", str(_config(tmp_path, demo_data, classification__root=str(flat)))]
    )
    assert "no class folders" in err and "valprep.sh" in err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    err = _fails(
        capsys,
        [
            "pretrain",
            "--config",
            str(_config(tmp_path, demo_data, classification__root=str(tmp_path / "empty"))),
        ],
    )
    assert "is empty" in err


def test_target_with_fewer_than_two_images_is_refused(tmp_path, demo_data, capsys) -> None:
    single = tmp_path / "single" / "imagesTr"
    single.mkdir(parents=True)
    from PIL import Image

    Image.new("L", (16, 16), 3).save(single / "only.png")
    targets = [{"name": "one", "root": str(single.parent)}]
    err = _fails(capsys, ["pretrain", "--config", str(_config(tmp_path, demo_data, score__targets=targets))])
    assert "holds 1 image(s): the robustness score needs at least 2" in err


def test_initial_checkpoint_that_does_not_fit_is_refused(tmp_path, demo_data, capsys) -> None:
    wrong = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), wrong)
    err = _fails(
        capsys,
        ["pretrain", "--config", str(_config(tmp_path, demo_data, pretrain__init_checkpoint=str(wrong)))],
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
