"""A straightforward reference implementation of the robustness score, for the score benchmark.

Written from the formula in :mod:`trainables.transferability` (no code is
shared with it, and none is taken from the paper's release), the way a
research script computes it:

- per view, a Python loop over batches: jitter the batch with that view's
  ColorJitter draw, normalise, run the encoder's full feature pyramid (every
  level, as an ``smp`` encoder returns it) and keep the pooled map at
  ``level``; features are gathered in a list and concatenated;
- then, in float32, s_i = max(0, d(q_i, k_i) - d(q_i, k_pi(i)) + m) with the
  fixed pairing pi(0) = 1, pi(1) = 0, pi(j) = N + 1 - j, and R = mean_i s_i.

The jitter draws follow the contract ("paper" views: one draw per view for
all images, seeded with ``SeedSequence([seed, view])``), so both
implementations see the same pixels and must give the same R within 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import ColorJitter
from torchvision.transforms import functional as TF

JITTER = ColorJitter(brightness=0.1, contrast=0.05, saturation=0.1, hue=0.05)


def jitter_params(seed: int, view: int) -> tuple[list[int], float, float, float, float]:
    """One ColorJitter draw (op order, brightness, contrast, saturation, hue) for one view."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(int(np.random.SeedSequence([seed, view]).generate_state(1)[0]))
        order, b, c, s, h = ColorJitter.get_params(
            JITTER.brightness, JITTER.contrast, JITTER.saturation, JITTER.hue
        )
    finally:
        torch.random.set_rng_state(state)
    return [int(i) for i in order], float(b), float(c), float(s), float(h)


def jitter(batch: torch.Tensor, params: tuple[list[int], float, float, float, float]) -> torch.Tensor:
    order, b, c, s, h = params
    for op in order:
        if op == 0:
            batch = TF.adjust_brightness(batch, b)
        elif op == 1:
            batch = TF.adjust_contrast(batch, c)
        elif op == 2:
            batch = TF.adjust_saturation(batch, s)
        else:
            batch = TF.adjust_hue(batch, h)
    return batch.clamp(0, 1)


def distance(a: torch.Tensor, b: torch.Tensor, name: str) -> torch.Tensor:
    if name == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=1)
    if name == "mse":
        return ((a - b) ** 2).mean(dim=1)
    if name == "pearson":
        return 1 - F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True), dim=1)
    raise KeyError(name)


@torch.no_grad()
def reference_score(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    level: int = -2,
    distance_name: str = "cosine",
    margin: float = 0.5,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """R, mean positive and mean negative distance of ``model`` on N x 3 x H x W images in [0, 1]."""
    device = torch.device(device)
    model.eval()
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    features: list[list[torch.Tensor]] = [[], []]
    for view in (0, 1):
        params = jitter_params(seed, view)
        for start in range(0, len(images), batch_size):
            batch = (jitter(images[start : start + batch_size], params) - mean_t) / std_t
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                pyramid = model.forward_intermediates(  # type: ignore[operator]
                    batch.to(device), intermediates_only=True
                )
            features[view].append(pyramid[level].float().mean(dim=(2, 3)).cpu())
    q, k = torch.cat(features[0]), torch.cat(features[1])
    n = len(q)
    partners = [1, 0] + [n + 1 - j for j in range(2, n)]
    positive = distance(q, k, distance_name)
    negative = distance(q, k[partners], distance_name)
    per_image = torch.clamp(positive - negative + margin, min=0)
    return {
        "robustness": per_image.mean().item(),
        "robustness_pos": positive.mean().item(),
        "robustness_neg": negative.mean().item(),
    }
