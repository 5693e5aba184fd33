"""The label-free robustness score of Hidy, Bakos and Lukács (arXiv 2410.18677).

What it measures
    How well an encoder tells target images apart under a mild photometric
    perturbation: each target image is seen in two colour-jittered views, and a
    contrastive triplet margin compares the distance between the two views of
    the same image (positive) with the distance to the second view of another
    image (negative).

Definition (paper-exact)
    For N target images, q_i and k_i are the features of view 0 and view 1 of
    image i. The negative partner of i is the fixed pairing on 0-based indices
    pi(0) = 1, pi(1) = 0, pi(j) = N + 1 - j for j >= 2 (for odd N the middle
    image is its own partner, which makes its negative a positive: a warning is
    issued). Per image

        s_i = max(0, d(q_i, k_i) - d(q_i, k_pi(i)) + m)

    and the score is R = mean_i s_i.

Range and direction
    R lies in [0, m + max d]. Lower is more robust; R = m means the features do
    not tell the images apart (positive and negative distances are equal), and
    R = 0 means every positive pair is closer than its negative by at least m.

Distances
    ``cosine`` 1 - cosine similarity (the default), ``mse`` the mean of squared
    differences (the paper's "l2"), ``pearson`` 1 - Pearson correlation.

Views
    ``torchvision.transforms.ColorJitter(brightness=0.1, contrast=0.05,
    saturation=0.1, hue=0.05)`` applied to images in [0, 1] before
    normalisation. View mode ``paper`` draws one set of jitter parameters per
    view for all N images together (as the released code does); ``per_image``
    draws independently per image. Parameters come from a seed, never from the
    global RNG, and the views are computed once per probe, so the score is
    reproducible, identical every epoch, and independent of how the forward
    passes are chunked into batches.

Features
    The encoder's feature map at ``level`` counted from the deepest (-1 the
    deepest, -2 the second deepest as in the paper), global-average-pooled over
    H x W or flattened when ``pooled`` is false; the encoder runs in eval mode
    without gradients (mixed precision on CUDA when asked).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

from trainables.models import encoder_features

#: The paper's colour jitter.
PAPER_JITTER = {"brightness": 0.1, "contrast": 0.05, "saturation": 0.1, "hue": 0.05}
VIEW_MODES = ("paper", "per_image")


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


def _mse_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean(dim=1)


def _pearson_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _cosine_distance(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True))


#: Row-wise distances d(a_i, b_i) between two N x D feature matrices.
DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": _cosine_distance,
    "mse": _mse_distance,
    "pearson": _pearson_distance,
}


def negative_partners(n: int) -> torch.Tensor:
    """The paper's fixed negative pairing pi on 0-based indices (shape n, dtype long)."""
    if n < 2:
        raise ValueError(f"the robustness score needs at least 2 images, got {n}")
    partners = n + 1 - torch.arange(n)
    partners[0], partners[1] = 1, 0
    return partners


def _triplets(
    q: torch.Tensor, k: torch.Tensor, distance: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (s, positive distance, negative distance), in float64."""
    if distance not in DISTANCES:
        raise KeyError(f"unknown distance {distance!r}; valid: {sorted(DISTANCES)}")
    if q.ndim != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be N x D, got {tuple(q.shape)} and {tuple(k.shape)}")
    q, k = q.double(), k.double()  # float64: the mean over N must not depend on chunking
    d = DISTANCES[distance]
    positive, negative = d(q, k), d(q, k[negative_partners(q.shape[0])])
    return torch.clamp(positive - negative + margin, min=0.0), positive, negative


def robustness_from_features(
    q: torch.Tensor, k: torch.Tensor, *, distance: str = "cosine", margin: float = 0.5
) -> torch.Tensor:
    """Per-image scores s_i = max(0, d(q_i, k_i) - d(q_i, k_pi(i)) + margin).

    ``q`` and ``k`` are N x D features of view 0 and view 1 (N >= 2). Returns a
    float64 tensor of shape N; the robustness score R is its mean.
    """
    return _triplets(q, k, distance, margin)[0]


@dataclass(frozen=True)
class RobustnessResult:
    """R (``robustness``) with the mean positive and negative distances behind it."""

    robustness: float
    robustness_pos: float
    robustness_neg: float
    n_images: int

    def as_metrics(self, names: dict[str, str] | None = None) -> dict[str, float]:
        values = {
            "robustness": self.robustness,
            "robustness_pos": self.robustness_pos,
            "robustness_neg": self.robustness_neg,
        }
        names = names or {key: key for key in values}
        return {names[key]: value for key, value in values.items()}


@dataclass(frozen=True)
class JitterDraw:
    """One draw of ColorJitter's parameters: the order of the four ops and their factors."""

    order: tuple[int, ...]
    brightness: float
    contrast: float
    saturation: float
    hue: float

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Jitter images in [0, 1] (..., 3, H, W) exactly as ``ColorJitter.forward`` would."""
        ops = {
            0: lambda x: TF.adjust_brightness(x, self.brightness),
            1: lambda x: TF.adjust_contrast(x, self.contrast),
            2: lambda x: TF.adjust_saturation(x, self.saturation),
            3: lambda x: TF.adjust_hue(x, self.hue),
        }
        for op in self.order:
            images = ops[op](images)
        return images


def view_seed(seed: int, view: int) -> int:
    """The torch seed of one view's jitter draws, derived from the score's seed."""
    return int(np.random.SeedSequence([seed, view]).generate_state(1)[0])


def draw_jitter(count: int, *, seed: int, view: int) -> list[JitterDraw]:
    """``count`` independent ColorJitter draws for one view, from a seed (global RNG untouched)."""
    jitter = ColorJitter(**PAPER_JITTER)
    draws = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(seed, view))
        for _ in range(count):
            order, b, c, s, h = ColorJitter.get_params(
                jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue
            )
            draws.append(JitterDraw(tuple(int(i) for i in order), *(float(x) for x in (b, c, s, h))))
    return draws


def make_views(images: torch.Tensor, *, mode: str = "paper", seed: int = 0) -> list[torch.Tensor]:
    """The two jittered views (in [0, 1]) of N x 3 x H x W images in [0, 1]."""
    if mode not in VIEW_MODES:
        raise KeyError(f"unknown view mode {mode!r}; valid: {list(VIEW_MODES)}")
    views = []
    for view in (0, 1):
        if mode == "paper":
            (draw,) = draw_jitter(1, seed=seed, view=view)
            views.append(draw.apply(images).clamp(0, 1))
        else:
            draws = draw_jitter(images.shape[0], seed=seed, view=view)
            views.append(
                torch.stack([d.apply(img) for d, img in zip(draws, images, strict=True)]).clamp(0, 1)
            )
    return views


class RobustnessProbe:
    """A fixed target sample in two fixed views; scores any encoder on it.

    Built once per trial (the views cost one pass of jitter over N images);
    :meth:`score` then costs two feature passes. Memory: 2 x N x 3 x S x S
    float32 on the CPU (about 300 MB for N = 256 at S = 224).
    """

    def __init__(
        self,
        images: torch.Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        views: str = "paper",
        view_seed: int = 0,
        level: int = -2,
        pooled: bool = True,
        distance: str = "cosine",
        margin: float = 0.5,
        batch_size: int = 64,
    ) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be N x 3 x H x W, got {tuple(images.shape)}")
        n = images.shape[0]
        if n < 2:
            raise ValueError(f"the robustness score needs at least 2 images, got {n}")
        if n % 2:
            warnings.warn(
                f"odd number of target images ({n}): image {n // 2 + 1} is its own negative "
                "partner, which biases the score upwards; use an even number",
                stacklevel=2,
            )
        if distance not in DISTANCES:
            raise KeyError(f"unknown distance {distance!r}; valid: {sorted(DISTANCES)}")
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.views = [(v - mean_t) / std_t for v in make_views(images.float(), mode=views, seed=view_seed)]
        self.level, self.pooled = level, pooled
        self.distance, self.margin, self.batch_size = distance, margin, batch_size

    @property
    def n_images(self) -> int:
        return self.views[0].shape[0]

    @torch.no_grad()
    def features(
        self, model: torch.nn.Module, view: int, device: torch.device, amp_dtype: torch.dtype | None
    ) -> torch.Tensor:
        """N x D features of one view, computed in chunks of ``batch_size``."""
        chunks = []
        for start in range(0, self.n_images, self.batch_size):
            batch = self.views[view][start : start + self.batch_size].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                chunks.append(encoder_features(model, batch, self.level, self.pooled).float().cpu())
        return torch.cat(chunks)

    def score(
        self,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
    ) -> RobustnessResult:
        """R of ``model``'s features on the two views; the model's train/eval mode is restored."""
        device = torch.device(device)
        was_training = model.training
        model.eval()
        try:
            q = self.features(model, 0, device, amp_dtype)
            k = self.features(model, 1, device, amp_dtype)
        finally:
            model.train(was_training)
        per_image, positive, negative = _triplets(q, k, self.distance, self.margin)
        return RobustnessResult(
            robustness=float(per_image.mean()),
            robustness_pos=float(positive.mean()),
            robustness_neg=float(negative.mean()),
            n_images=self.n_images,
        )


def robustness_of_encoder(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    **probe_options: Any,
) -> RobustnessResult:
    """R (and mean positive/negative distances) of a timm encoder on N x 3 x H x W images in [0, 1].

    ``probe_options`` are those of :class:`RobustnessProbe` (views, view_seed,
    level, pooled, distance, margin, batch_size), with the same defaults.
    """
    probe = RobustnessProbe(images, mean=mean, std=std, **probe_options)
    return probe.score(model, device, amp_dtype)
