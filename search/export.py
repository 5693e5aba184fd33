"""``medseg-search export`` and ``predict``: the study's models as plain files, and masks for new images.

Export writes the selected encoders as plain timm state_dicts
(``encoders/*.safetensors``, loadable with ``timm.create_model(name,
pretrained_cfg_overlay=dict(file=...))`` or ``model.load_state_dict``) and the
best U-Net of every downstream trial (``unets/<trial>.safetensors``) with a
JSON of how to rebuild and feed it. Predict reads such a JSON (or the
.safetensors beside it) and writes a mask per input: PNG for 2D images,
NIfTI for volumes (predicted slice by slice, written back in the input's own
orientation with its affine).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from search.evaluation import best_checkpoint
from trainables.data.cases import IMAGE_SUFFIXES, VOLUME_SUFFIXES, read_image_file, scale_to_unit
from trainables.data.samples import input_statistics
from trainables.errors import MedsegError
from trainables.evaluation import predict
from trainables.finetune_settings import FinetuneTrial, SourceCheckpoint
from trainables.finetuning import source_weights
from trainables.loops import Precision
from trainables.models import create_unet
from trainables.settings import NORMALIZATIONS


def _save(weights: dict[str, torch.Tensor], path: Path, spec: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(spec, indent=2))
    return path


def _stem_channels(state: dict[str, torch.Tensor]) -> int:
    first = next(v for k, v in state.items() if k.startswith("encoder.") and v.ndim == 4)
    return int(first.shape[1])


def _classes_of_head(encoder: str, weights: dict[str, torch.Tensor]) -> int | None:
    """The pretraining classifier's class count (to rebuild with ``timm.create_model(num_classes=...)``)."""
    import timm

    head = timm.models.get_pretrained_cfg(encoder.split(".")[0])
    key = f"{head.classifier}.weight" if head is not None and isinstance(head.classifier, str) else None
    return int(weights[key].shape[0]) if key in weights else None


def export(folder: str | Path, out: str | Path) -> list[Path]:
    """Export a pipeline's (or an experiment's) selected encoders and best U-Nets; the files written."""
    folder, out = Path(folder).resolve(), Path(out)
    written = []
    manifest_path = folder / "selection.json"
    if manifest_path.exists():
        for entry in json.loads(manifest_path.read_text())["selected"]:
            source = SourceCheckpoint(
                kind=entry["kind"],
                encoder=entry["encoder"],
                path=entry["checkpoint"],
                weights_key=entry.get("weights_key", "model"),
            )
            weights = source_weights(source)
            assert weights is not None
            name = f"{entry['encoder']}-{entry['kind']}-e{entry['epoch']}-{entry.get('trial_id', 'trial')}"
            spec = {
                k: entry.get(k)
                for k in (
                    "encoder",
                    "kind",
                    "epoch",
                    "score",
                    "trial_id",
                    "trial_name",
                    "recipe",
                    "normalize",
                )
            }
            spec["num_classes"] = _classes_of_head(entry["encoder"], weights)
            written.append(_save(weights, out / "encoders" / f"{name}.safetensors", spec))
    downstream = folder / "downstream" if (folder / "downstream").is_dir() else folder
    for trial_dir in sorted(d for d in downstream.iterdir() if d.is_dir()):
        best = best_checkpoint(trial_dir)
        if best is None:
            continue
        trial = FinetuneTrial.from_mapping(best.record["config"])
        state = torch.load(best.folder / "state.pt", map_location="cpu", weights_only=True)["model"]
        mean, std = input_statistics(NORMALIZATIONS[trial.source.normalize], _stem_channels(state))
        spec = {
            "encoder": trial.source.encoder,
            "classes": list(trial.data.class_names),
            "in_channels": _stem_channels(state),
            "mean": mean,
            "std": std,
            "image_size": trial.data.image_size,
            "resize": trial.data.resize,
            "slice_axis": trial.data.slice_axis,
            "mode": trial.mode,
            "epoch": best.epoch,
            "val_dice_mean": best.val_dice_mean,
            "source": best.record["config"]["source"],
        }
        written.append(_save(state, out / "unets" / f"{trial_dir.name}.safetensors", spec))
    if not written:
        raise MedsegError(f"nothing to export in {folder}: no selection.json and no downstream checkpoints")
    return written


def load_exported(model: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """An exported U-Net (its .json or .safetensors) and its spec."""
    from safetensors.torch import load_file

    path = Path(model)
    spec_path, weights_path = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not spec_path.exists() or not weights_path.exists():
        raise MedsegError(
            f"exported model {path} needs both {spec_path.name} and {weights_path.name}: "
            "write them with medseg-search export"
        )
    spec = json.loads(spec_path.read_text())
    if "classes" not in spec:
        raise MedsegError(f"{spec_path} describes an encoder, not a U-Net: give one from unets/")
    unet = create_unet(spec["encoder"], len(spec["classes"]), int(spec["in_channels"]))
    unet.load_state_dict(load_file(str(weights_path)))
    return unet, spec


def _as_channels(images: np.ndarray, channels: int) -> np.ndarray:
    if images.ndim == 4 and channels == 1:
        return images.mean(axis=-1)
    if images.ndim == 3 and channels == 3:
        return np.repeat(images[..., None], 3, axis=-1)
    return images


def _inputs(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for given in map(Path, paths):
        if given.is_dir():
            files += sorted(
                p for p in given.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES)
            )
        elif given.exists():
            files.append(given)
        else:
            raise MedsegError(f"input {given} does not exist")
    if not files:
        raise MedsegError(f"no images or volumes among {paths}")
    return files


def predict_files(model: str | Path, inputs: list[str], out: str | Path, device: str = "auto") -> list[Path]:
    """Write a mask for every input image or volume; the files written."""
    import nibabel as nib
    from PIL import Image

    unet, spec = load_exported(model)
    precision = Precision.choose(device, "auto", channels_last=False)
    unet = precision.prepare(unet)
    settings = {
        "size": spec["image_size"],
        "resize": spec["resize"],
        "mean": spec["mean"],
        "std": spec["std"],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _inputs(inputs):
        if path.name.lower().endswith(VOLUME_SUFFIXES):
            original: Any = nib.load(path)
            canonical = nib.as_closest_canonical(original)
            volume = scale_to_unit(np.asarray(canonical.dataobj, dtype=np.float32))
            slices = np.moveaxis(volume, spec["slice_axis"], 0)
            labels = np.moveaxis(
                predict(unet, _as_channels(slices, spec["in_channels"]), precision, **settings),
                0,
                spec["slice_axis"],
            )
            back = nib.orientations.ornt_transform(
                nib.io_orientation(canonical.affine), nib.io_orientation(original.affine)
            )
            labels = nib.orientations.apply_orientation(labels, back).astype(np.uint8)
            target = out / (path.name.split(".")[0] + "_mask.nii.gz")
            nib.save(nib.Nifti1Image(labels, original.affine), target)
        else:
            image = scale_to_unit(read_image_file(path))[None]
            labels = predict(unet, _as_channels(image, spec["in_channels"]), precision, **settings)[0]
            target = out / f"{path.stem}_mask.png"
            Image.fromarray(labels.astype(np.uint8)).save(target)
        written.append(target)
    return written
