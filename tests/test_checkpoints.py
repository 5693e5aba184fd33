"""Atomic checkpoint files and RNG state round trips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainables import checkpoints
from trainables.checkpoints import (
    atomic_torch_save,
    capture_rng,
    load_training_state,
    restore_rng,
    save_training_state,
)
from trainables.errors import CheckpointError


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draws()
    save_training_state(tmp_path, {"rng": capture_rng(), "epoch": 4})
    expected = _draws()
    _draws()  # move every generator on
    state = load_training_state(tmp_path)
    restore_rng(state["rng"])
    assert _draws() == expected
    assert state["epoch"] == 4


def test_interrupted_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch) -> None:
    target = tmp_path / "state.pt"
    atomic_torch_save({"epoch": 1}, target)

    def crash(obj, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_foreign_or_missing_state_is_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no state.pt"):
        load_training_state(tmp_path)
    torch.save({"model": {}}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="not a medseg-search pretraining checkpoint"):
        load_training_state(tmp_path)
