"""Model factories and weight loading: every ``timm.create_model`` and ``smp`` call lives here.

Encoders are created without downloading anything; weights come only from
files the user names, loaded strictly over the backbone (the classifier head is
ignored) and verified tensor by tensor afterwards.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, cast

import timm
import torch
from torch import nn

from trainables.errors import CheckpointError, ModelError

_MAX_LISTED_KEYS = 6


def _require_known_model(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f'unknown timm model {name!r}{hint} (list names with `python -c "import timm; '
            f"print(timm.list_models('*{name[:4]}*'))\"`)"
        )


def create_classifier(name: str, num_classes: int, drop_path_rate: float = 0.0) -> nn.Module:
    """A randomly initialised timm classifier (no weights are downloaded)."""
    _require_known_model(name)
    kwargs: dict[str, Any] = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelError(
            f"timm model {name!r} rejects drop_path_rate: {exc}; set pretrain.drop_path_rate=0"
        ) from None


def feature_level_count(model: nn.Module) -> int:
    """Number of feature levels (U-Net skip stages) that timm reports for ``model``."""
    return len(model.feature_info)  # type: ignore[arg-type]


def encoder_features(model: nn.Module, images: torch.Tensor, level: int, pooled: bool) -> torch.Tensor:
    """N x D features of ``model`` at ``level`` (counted from the deepest; -1 is the deepest).

    The map is global-average-pooled over H x W (``pooled``) or flattened.
    """
    n_levels = feature_level_count(model)
    if not -n_levels <= level <= -1:
        raise ModelError(
            f"feature level {level} is out of range for a model with {n_levels} levels "
            f"(valid: -1 ... -{n_levels})"
        )
    (feature_map,) = model.forward_intermediates(  # type: ignore[operator]
        images, indices=[n_levels + level], intermediates_only=True, stop_early=True, output_fmt="NCHW"
    )
    return feature_map.mean(dim=(2, 3)) if pooled else feature_map.flatten(1)


def check_encoder(name: str, image_size: int, level: int) -> int:
    """Refuse encoders smp's U-Net cannot wrap or whose features are not N x C x H x W maps.

    Builds ``smp.Unet("tu-<name>")`` and the timm classifier at ``image_size``
    and runs one forward pass of each on a zero image. Returns the number of
    feature levels. Raises :class:`ModelError` with the reason.
    """
    import segmentation_models_pytorch as smp

    _require_known_model(name)
    size = max(64, -(-image_size // 32) * 32)  # U-Nets need multiples of 32
    try:
        unet = smp.Unet(f"tu-{name}", encoder_weights=None, classes=1).eval()
        with torch.no_grad():
            unet(torch.zeros(1, 3, size, size))
    except Exception as exc:  # smp/timm raise ValueError, RuntimeError, AssertionError ...
        raise ModelError(
            f"encoder {name!r} cannot be wrapped in a segmentation_models_pytorch U-Net "
            f"({type(exc).__name__}: {exc}); choose a convolutional or hierarchical timm encoder "
            "such as resnet50 or convnext_tiny"
        ) from None
    classifier = create_classifier(name, num_classes=2).eval()
    with torch.no_grad():
        feature_maps = classifier.forward_intermediates(  # type: ignore[operator]
            torch.zeros(1, 3, size, size), intermediates_only=True
        )
    bad = [tuple(f.shape) for f in feature_maps if f.ndim != 4]
    if bad:
        raise ModelError(f"encoder {name!r} gives features of shapes {bad}, not N x C x H x W maps")
    n_levels = feature_level_count(classifier)
    if not -n_levels <= level <= -1:
        raise ModelError(
            f"score.level={level} is out of range for {name!r}, which has {n_levels} "
            f"feature levels: use -1 ... -{n_levels}"
        )
    return n_levels


def _pretrained_cfg(model: nn.Module) -> dict[str, Any]:
    cfg: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    return cfg


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of the classification head(s), from timm's pretrained_cfg."""
    heads = _pretrained_cfg(model).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return tuple(f"{head}." for head in heads)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_backbone(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly over the backbone; the classifier head is ignored.

    Missing, unexpected or wrongly shaped backbone keys raise
    :class:`CheckpointError` listing them; after loading, every backbone tensor
    is checked to equal the file's.
    """
    heads = classifier_prefixes(model)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    given = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    wrong_shape = sorted(
        f"{k} {tuple(given[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(given)
        if tuple(given[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong_shape:
        parts = [
            f"{label}: {_listing(keys)}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape (file vs model)", wrong_shape),
            )
            if keys
        ]
        raise CheckpointError(
            f"checkpoint {source} does not fit encoder {_pretrained_cfg(model).get('architecture')!r} "
            f"({'; '.join(parts)}); pass the timm model name the checkpoint was trained with"
        )
    model.load_state_dict(given, strict=False)
    loaded = model.state_dict()
    differing = [k for k in given if not torch.equal(loaded[k].cpu(), given[k].to(loaded[k].dtype).cpu())]
    if differing:
        raise CheckpointError(f"checkpoint {source}: tensors differ after loading: {_listing(differing)}")


def _encoder_key_in(source: Mapping[str, torch.Tensor], key: str) -> str | None:
    """The classifier key of a U-Net encoder key (timm's feature wrapper flattens top-level
    ``nn.Sequential``s: ``stem.0.weight`` becomes ``stem_0.weight``)."""
    for candidate in (key, re.sub(r"^([^.]+)_(\d+)\.", r"\1.\2.", key)):
        if candidate in source:
            return candidate
    return None


def transfer_encoder(unet: nn.Module, classifier: nn.Module, source: str) -> None:
    """Copy a classifier's backbone into a ``smp.Unet("tu-...")`` encoder; every encoder tensor must
    be found, and equals the classifier's afterwards (smp/timm's own loading never fails on a wrong file)."""
    weights = classifier.state_dict()
    encoder: Any = cast(Any, unet).encoder.model
    mapped, missing = {}, []
    for key in encoder.state_dict():
        found = _encoder_key_in(weights, key)
        if found is None:
            missing.append(key)
        else:
            mapped[key] = weights[found]
    if missing:
        raise CheckpointError(f"checkpoint {source} leaves U-Net encoder tensors unset: {_listing(missing)}")
    encoder.load_state_dict(mapped, strict=True)
    loaded = encoder.state_dict()
    differing = [
        k for k, v in mapped.items() if not torch.equal(loaded[k].cpu(), v.to(loaded[k].dtype).cpu())
    ]
    if differing:
        raise CheckpointError(
            f"checkpoint {source}: encoder tensors differ after loading: {_listing(differing)}"
        )


def sum_stem_to_grey(unet: nn.Module) -> None:
    """Adapt the encoder to 1-channel input by summing the RGB filters of its first convolution
    (a grey image repeated 3 times gives the same response)."""
    encoder: Any = unet.encoder
    stem = next(m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)
    stem.weight = nn.Parameter(stem.weight.detach().sum(dim=1, keepdim=True))
    stem.in_channels = 1
    encoder._in_channels = 1


def create_unet(
    encoder: str,
    classes: int,
    in_channels: int,
    weights: Mapping[str, torch.Tensor] | None = None,
    source: str = "weights",
) -> nn.Module:
    """``smp.Unet`` on the timm encoder ``encoder`` with a freshly initialised decoder.

    ``weights`` (a timm classifier state_dict) are loaded strictly over the
    backbone and verified; None keeps the encoder's random initialisation.
    ``in_channels`` 1 sums the stem's RGB filters; 3 keeps them.
    """
    import segmentation_models_pytorch as smp

    _require_known_model(encoder)
    if in_channels not in (1, 3):
        raise ModelError(f"images with {in_channels} channels are not supported: use grey or RGB images")
    unet = smp.Unet(f"tu-{encoder}", encoder_weights=None, in_channels=3, classes=classes)
    if weights is not None:
        classifier = create_classifier(encoder, num_classes=0)
        load_backbone(classifier, weights, source)
        transfer_encoder(unet, classifier, source)
    if in_channels == 1:
        sum_stem_to_grey(unet)
    return unet
