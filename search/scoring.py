"""``medseg-search score``: the robustness score of existing checkpoint files, outside a search.

Checkpoints are ours (``state.pt`` of a trial) or plain timm state_dicts in
.pth/.pt or .safetensors (third-party ImageNet weights, say). They are loaded
strictly over the backbone; the classifier head is ignored. Images are
preprocessed as timm defines for the model (input size, mean and std of its
pretrained config) unless ``image_size`` or ``normalize`` say otherwise. All
checkpoints are scored on the same target sample in the same two views.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from timm.data import resolve_model_data_config

from search.config import read_yaml
from search.preflight import check_target
from trainables.checkpoints import read_weights
from trainables.data.targets import sample_target
from trainables.loops import Precision
from trainables.models import check_encoder, create_classifier, load_backbone
from trainables.settings import NORMALIZATIONS, TargetSet, validate
from trainables.transferability import RobustnessProbe


@dataclass(frozen=True)
class CheckpointScore:
    """One row of the ``score`` output (also its JSON object)."""

    checkpoint: str
    robustness: float
    robustness_pos: float
    robustness_neg: float
    n_images: int


def load_target(spec: str) -> TargetSet:
    """A target from a YAML file (a target mapping, or a config whose score.targets[0] is used)
    or from a dataset folder in the generic layout."""
    path = Path(spec)
    if path.is_dir():
        return validate(TargetSet, {"name": "target", "root": str(path)}, f"--target {spec}")
    data = read_yaml(path)
    targets = (data.get("score") or {}).get("targets")
    if targets:
        primary = next((t for t in targets if isinstance(t, dict) and t.get("primary")), targets[0])
        data = primary
    target: TargetSet = validate(TargetSet, data, f"--target {spec}")
    return target


def score_checkpoints(
    model_name: str,
    checkpoints: list[str],
    target: TargetSet,
    *,
    n_images: int = 256,
    sample_seed: int = 0,
    level: int = -2,
    pooled: bool = True,
    distance: str = "cosine",
    margin: float = 0.5,
    views: str = "paper",
    view_seed: int = 0,
    image_size: int | None = None,
    normalize: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> list[CheckpointScore]:
    """Score every checkpoint on one target sample; refuses a checkpoint that does not fit."""
    check_target(target)
    check_encoder(model_name, image_size or 224, level)
    model = create_classifier(model_name, num_classes=0)
    timm_cfg: dict[str, Any] = resolve_model_data_config(model)
    mean, std = NORMALIZATIONS[normalize] if normalize else (timm_cfg["mean"], timm_cfg["std"])
    size = image_size or int(timm_cfg["input_size"][-1])
    images = sample_target(
        target.format,
        target.root,
        slice_axis=target.slice_axis,
        n_images=n_images,
        seed=sample_seed,
        size=size,
    )
    probe = RobustnessProbe(
        images,
        mean=mean,
        std=std,
        views=views,
        view_seed=view_seed,
        level=level,
        pooled=pooled,
        distance=distance,
        margin=margin,
        batch_size=batch_size,
    )
    precision = Precision.choose(device, "auto", channels_last=False)
    rows = []
    for checkpoint in checkpoints:
        load_backbone(model, read_weights(checkpoint), checkpoint)
        result = probe.score(precision.prepare(model), precision.device, precision.amp_dtype)
        rows.append(
            CheckpointScore(
                checkpoint, result.robustness, result.robustness_pos, result.robustness_neg, result.n_images
            )
        )
        model.cpu()
    return rows


def format_table(rows: list[CheckpointScore]) -> str:
    """A plain-text table, one checkpoint per line."""
    header = f"{'robustness':>10}  {'pos':>8}  {'neg':>8}  {'images':>6}  checkpoint"
    lines = [header] + [
        f"{r.robustness:10.4f}  {r.robustness_pos:8.4f}  {r.robustness_neg:8.4f}  "
        f"{r.n_images:6d}  {r.checkpoint}"
        for r in rows
    ]
    return "\n".join(lines)


def as_json_rows(rows: list[CheckpointScore]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
