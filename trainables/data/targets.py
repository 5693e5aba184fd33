"""The score's target sample: N 2D images drawn once, with a seed, from a set's training split."""

from __future__ import annotations

import warnings
from collections import defaultdict

import numpy as np
import torch

from trainables.data.cases import Case
from trainables.data.formats import find_cases
from trainables.errors import DataError


def count_images(cases: list[Case]) -> int:
    """How many 2D images the cases hold (blank slices included)."""
    return sum(case.count() for case in cases)


def _to_rgb_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.unsqueeze(0).expand(3, -1, -1)
    resized = torch.nn.functional.interpolate(
        tensor.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp(0.0, 1.0)


def sample_target_images(
    cases: list[Case], *, n_images: int, seed: int, size: int, source: str = ""
) -> torch.Tensor:
    """N x 3 x size x size images in [0, 1], drawn once with ``seed`` from ``cases``.

    The order is the seeded random order of the draw (the score's negative
    pairing is by position). Grey images are repeated to 3 channels; images are
    resized to size x size (bilinear, antialiased). Blank (constant) images are
    skipped. With fewer than ``n_images`` usable images all are used, rounded
    down to an even count, with a warning; fewer than 2 raise DataError.
    """
    refs = [(c, i) for c, case in enumerate(cases) for i in range(case.count())]
    order = np.random.default_rng(seed).permutation(len(refs))
    chosen: list[torch.Tensor] = []
    position = 0
    while len(chosen) < n_images and position < len(order):
        # read each case of this window once; blank images are replaced from the next window
        window = [refs[i] for i in order[position : position + n_images - len(chosen)]]
        position += len(window)
        by_case: dict[int, list[int]] = defaultdict(list)
        for case_index, sample in window:
            by_case[case_index].append(sample)
        loaded = {c: cases[c].load(with_masks=False) for c in by_case}
        usable = {c: set(arrays.nonblank()) for c, arrays in loaded.items()}
        for case_index, sample in window:
            if sample in usable[case_index]:
                chosen.append(_to_rgb_tensor(loaded[case_index].images[sample], size))
    if len(chosen) < 2:
        raise DataError(
            f"target set {source} has {len(chosen)} usable image(s): the robustness score needs at "
            "least 2; add images to its training split or choose another target set"
        )
    if len(chosen) < n_images:
        usable_count = len(chosen) - len(chosen) % 2
        warnings.warn(
            f"target set {source} has only {len(chosen)} usable images (asked for {n_images}); "
            f"using {usable_count}",
            stacklevel=2,
        )
        chosen = chosen[:usable_count]
    return torch.stack(chosen)


def sample_target(
    format_name: str, root: str, *, slice_axis: int, n_images: int, seed: int, size: int
) -> torch.Tensor:
    """:func:`sample_target_images` of the training split of a set in ``format_name``'s layout."""
    cases = find_cases(format_name, root, "train", slice_axis)
    return sample_target_images(cases, n_images=n_images, seed=seed, size=size, source=str(root))
