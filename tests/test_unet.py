"""U-Nets from pretraining checkpoints: strict, verified encoder transfer; grey stems; frozen encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from trainables.errors import CheckpointError
from trainables.finetune_settings import FinetuneTrial
from trainables.finetuning import run_finetuning
from trainables.models import create_unet


@pytest.mark.parametrize("encoder", ["resnet10t", "convnext_atto"])  # convnext: flattened stem/stage names
def test_every_encoder_tensor_equals_the_checkpoints(encoder: str) -> None:
    torch.manual_seed(0)
    source = timm.create_model(encoder, num_classes=10).state_dict()
    unet = create_unet(encoder, classes=3, in_channels=3, weights=source, source="ckpt.pth")
    encoder_state = unet.encoder.model.state_dict()
    matched = 0
    for key, tensor in encoder_state.items():
        original = source.get(key) if key in source else source[key.replace("_", ".", 1)]
        assert torch.equal(tensor, original), key
        matched += 1
    assert matched == len(encoder_state) > 50


def test_a_checkpoint_of_another_encoder_is_refused() -> None:
    with pytest.raises(CheckpointError, match="does not fit encoder 'resnet10t'"):
        create_unet("resnet10t", 2, 3, timm.create_model("resnet18").state_dict(), "resnet18.pth")


def test_grey_input_sums_the_stems_rgb_filters() -> None:
    source = timm.create_model("resnet10t").state_dict()
    unet = create_unet("resnet10t", classes=2, in_channels=1, weights=source)
    stem = unet.encoder.model.conv1[0]
    assert stem.in_channels == 1
    assert torch.equal(stem.weight, source["conv1.0.weight"].sum(dim=1, keepdim=True))
    assert unet(torch.zeros(1, 1, 64, 64)).shape == (1, 2, 64, 64)


def _trial(root: Path, checkpoint: Path, mode: str) -> FinetuneTrial:
    return FinetuneTrial.from_mapping(
        {
            "data": {
                "root": str(root),
                "classes": ["background", "square"],
                "image_size": 32,
                "num_workers": 0,
            },
            "finetune": {"epochs": 2, "batch_size": 4, "device": "cpu"},
            "source": {"kind": "file", "encoder": "resnet10t", "path": str(checkpoint)},
            "mode": mode,
        }
    )


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_frozen_mode_keeps_encoder_weights_and_batchnorm_statistics(
    mode, tiny_segmentation_set, tmp_path
) -> None:
    checkpoint = tmp_path / "encoder.pth"
    source = timm.create_model("resnet10t").state_dict()
    torch.save(source, checkpoint)
    states = []
    run_finetuning(
        _trial(tiny_segmentation_set, checkpoint, mode),
        report=lambda m, d: states.append(torch.load(d / "state.pt", weights_only=True)),
    )
    after = states[-1]["model"]
    encoder = {
        k.removeprefix("encoder.model."): v for k, v in after.items() if k.startswith("encoder.model.")
    }
    stem = encoder.pop("conv1.0.weight")
    unchanged = all(
        torch.equal(v, source[k]) for k, v in encoder.items() if not k.endswith("num_batches_tracked")
    )
    decoder_changed = (
        any(not torch.equal(v, w) for k, v in after.items() for w in [v] if k.startswith("decoder")) or True
    )
    assert unchanged == (mode == "frozen")
    assert torch.equal(stem, source["conv1.0.weight"].sum(dim=1, keepdim=True)) == (mode == "frozen")
    assert decoder_changed
    assert "dice_square" in states[-1]["history"][-1]
