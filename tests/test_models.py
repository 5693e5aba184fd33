"""Encoder factories, the U-Net compatibility check and strict backbone loading."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from trainables.checkpoints import read_weights
from trainables.errors import CheckpointError, ModelError
from trainables.models import check_encoder, create_classifier, load_backbone


def test_unknown_model_is_refused_with_suggestions() -> None:
    with pytest.raises(ModelError, match=r"unknown timm model 'resnet181'.*did you mean.*resnet18"):
        create_classifier("resnet181", num_classes=2)


def test_encoder_that_unet_cannot_wrap_is_refused() -> None:
    with pytest.raises(ModelError, match="cannot be wrapped in a segmentation_models_pytorch U-Net"):
        check_encoder("vit_tiny_patch16_224", 224, -2)


def test_wrappable_encoder_reports_its_levels_and_refuses_a_level_out_of_range() -> None:
    assert check_encoder("resnet10t", 32, -2) == 5
    with pytest.raises(ModelError, match=r"score.level=-6 is out of range.*-1 ... -5"):
        check_encoder("resnet10t", 32, -6)


def test_backbone_loads_strictly_ignores_the_head_and_equals_the_file() -> None:
    source = timm.create_model("resnet18", num_classes=1000)
    target = create_classifier("resnet18", num_classes=3)
    load_backbone(target, source.state_dict(), "imagenet.pth")
    loaded = target.state_dict()
    for key, tensor in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], tensor), key
    assert loaded["fc.weight"].shape == (3, 512)


def test_checkpoint_of_another_encoder_is_refused_with_the_keys() -> None:
    wrong = timm.create_model("resnet34", num_classes=10).state_dict()
    with pytest.raises(CheckpointError, match=r"does not fit encoder 'resnet18'.*unexpected: layer1\.2\."):
        load_backbone(create_classifier("resnet18", num_classes=10), wrong, "resnet34.pth")


def test_wrongly_shaped_tensor_is_refused() -> None:
    state = timm.create_model("resnet18", num_classes=10).state_dict()
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    with pytest.raises(
        CheckpointError, match=r"wrong shape.*conv1.weight \(64, 1, 7, 7\) vs \(64, 3, 7, 7\)"
    ):
        load_backbone(create_classifier("resnet18", num_classes=10), state, "grey.pth")


def test_weights_are_read_from_pth_and_safetensors_with_prefixes_stripped(tmp_path) -> None:
    state = timm.create_model("resnet10t", num_classes=4).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    for name in ("ddp.pth", "w.safetensors"):
        read = read_weights(tmp_path / name)
        assert read.keys() == state.keys()
        assert all(torch.equal(read[k], state[k]) for k in state)


class Pickled:
    """An arbitrary class: loading it would run code, so weights_only refuses it."""


def test_unreadable_or_unsafe_weight_files_are_refused(tmp_path) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a state_dict"):
        read_weights(tmp_path / "garbage.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "object": Pickled()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_weights(tmp_path / "unsafe.pth")  # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError, match="does not exist"):
        read_weights(tmp_path / "missing.pth")
