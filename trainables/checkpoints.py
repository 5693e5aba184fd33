"""Checkpoint files: training state of a trial, RNG states, and user-given weight files.

A trial checkpoint is one file, ``state.pt``, inside the folder Ray Tune
persists. It is written atomically (a temporary file in the same folder, then
``os.replace``) so an interruption never leaves a half-written checkpoint, and
it is read with ``torch.load(weights_only=True)``: it holds only tensors and
plain Python values. Its ``model`` key is a plain timm state_dict, so timm's
own loader (and ``medseg-search score``) reads the file directly.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.errors import CheckpointError
from trainables.records import atomic_write

STATE_FILE = "state.pt"
FORMAT = "medseg-search/pretrain-v1"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def save_training_state(directory: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a trial's training state as ``<directory>/state.pt`` (atomically)."""
    return atomic_torch_save({"format": FORMAT, **state}, Path(directory) / STATE_FILE)


def load_training_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the training state written by :func:`save_training_state`."""
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no {STATE_FILE} in checkpoint folder {directory}") from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a medseg-search pretraining checkpoint ({FORMAT})")
    return state


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA RNG states, as values ``torch.load(weights_only=True)`` accepts."""
    numpy_state: Any = np.random.get_state()
    kind, keys, position, has_gauss, cached = numpy_state
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state_dict from a weight file: ours, or a plain timm state_dict (.pth/.pt/.bin or .safetensors).

    Uses timm's loader (EMA weights preferred when present, ``module.`` and
    ``_orig_mod.`` prefixes stripped) with ``weights_only=True``.
    """
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        state_dict = load_state_dict(str(path), use_ema=True, device="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read as a state_dict ({type(exc).__name__}: {str(exc)[:200]}); "
            "give a .pth/.pt saved with torch.save(model.state_dict()) or a .safetensors file"
        ) from None
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors")
    return tensors
