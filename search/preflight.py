"""Checks that run before any trial starts, so bad input fails in seconds.

Each check raises a :class:`~trainables.errors.MedsegError` whose one-line
message names the problem and the fix.
"""

from __future__ import annotations

from pathlib import Path

from search.config import Experiment
from search.downstream_config import DownstreamExperiment, check_sources
from search.storage import check_writable
from trainables.checkpoints import read_weights
from trainables.data.classification import check_split
from trainables.data.formats import find_cases
from trainables.data.targets import count_images
from trainables.errors import DataError
from trainables.finetune_settings import FinetuneTrial
from trainables.finetuning import source_weights, trial_splits
from trainables.models import check_encoder, create_classifier, create_unet, load_backbone
from trainables.settings import ClassificationData, PretrainTrial, TargetSet


def check_target(target: TargetSet) -> int:
    """A target set must exist and hold at least 2 images; returns how many it holds."""
    count = count_images(find_cases(target.format, target.root, "train", target.slice_axis))
    if count < 2:
        raise DataError(
            f"target set {target.name!r} ({target.root}) holds {count} image(s): the robustness "
            "score needs at least 2; add images to its training split"
        )
    return count


def check_classification(data: ClassificationData) -> tuple[str, ...]:
    """Both splits exist in ImageNet's layout; returns the class names."""
    classes = check_split(Path(data.root) / data.train_dir)
    check_split(Path(data.root) / data.val_dir, classes)
    return classes


def check_init_checkpoint(model_name: str, path: str) -> None:
    """A user-given initial checkpoint must fit the encoder (head ignored)."""
    load_backbone(create_classifier(model_name, num_classes=2), read_weights(path), path)


def check_experiment(experiment: Experiment) -> None:
    """Everything that can be checked on the driver before the first trial (each thing once)."""
    check_writable(experiment.config.storage_path)
    trials = [PretrainTrial.from_mapping(variant) for variant in experiment.variants]
    for data in dict.fromkeys(t.classification for t in trials):
        check_classification(data)
    for target in dict.fromkeys(target for t in trials for target in t.score.targets):
        check_target(target)
    for model, size, level in dict.fromkeys(
        (t.pretrain.model, t.pretrain.image_size, t.score.level) for t in trials
    ):
        check_encoder(model, size, level)
    for model, path in dict.fromkeys((t.pretrain.model, t.pretrain.init_checkpoint) for t in trials):
        if path:
            check_init_checkpoint(model, path)


def check_downstream(experiment: DownstreamExperiment) -> None:
    """Storage, checkpoints (loaded strictly into a U-Net encoder), the set's splits and labels."""
    check_writable(experiment.config.storage_path)
    check_sources(experiment)
    data = experiment.config.data
    trial = FinetuneTrial.from_mapping(experiment.trial_configs()[0])
    splits = trial_splits(trial)
    for name in ("train", "val", "test"):
        for part in splits[name]:
            if getattr(part.case, "label_path", "") is None:
                raise DataError(
                    f"case {part.case.case_id!r} of {data.root} ({name} split) has no mask or label volume: "
                    "every case needs one"
                )
    for source in dict.fromkeys(experiment.sources):
        create_unet(
            source.encoder, len(data.class_names), 3, source_weights(source), source.path or "random init"
        )
