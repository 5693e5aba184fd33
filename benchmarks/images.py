"""Real-looking benchmark images, made by code from photos that ship inside packages.

The photos are scikit-learn's two bundled sample photos (``china.jpg``,
``flower.jpg``, 427 x 640), which the demo's dependencies install. Where
scikit-learn is missing (the GPU machine), smooth multi-scale noise stands in:
it compresses and decodes like a photo more than white noise would, but the
JSON records which source was used.

- :func:`write_imagenet_like` writes JPEGs of ImageNet's typical size (random
  crops around 500 x 375 or 375 x 500, flips, mild colour shifts, quality 90)
  in ImageNet's folder layout (``<root>/train/<wnid>/*.JPEG``).
- :func:`photo_batch` gives N x 3 x S x S crops in [0, 1] for the score.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

_COMPLETE = ".complete"


def source_photos() -> tuple[list[np.ndarray], str]:
    """H x W x 3 uint8 photos, and where they came from."""
    try:
        from sklearn.datasets import load_sample_images

        return list(load_sample_images().images), "scikit-learn sample photos (china.jpg, flower.jpg)"
    except ImportError:
        return [_smooth_noise(np.random.default_rng(seed), 640, 480) for seed in range(4)], "smooth noise"


def _smooth_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Photo-like structure: noise summed over octaves, each upsampled bilinearly."""
    from PIL import Image

    image = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 7):
        cells = 2**octave
        small = rng.random((cells, cells, 3)).astype(np.float32)
        layer = Image.fromarray((small * 255).astype(np.uint8)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
        image += np.asarray(layer, np.float32) / 2**octave
    image -= image.min()
    return (image / image.max() * 255).astype(np.uint8)


def _crop(rng: np.random.Generator, photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """A random crop of about 60-100% of the photo, resized to width x height, flipped, tinted."""
    from PIL import Image

    h, w = photo.shape[:2]
    scale = rng.uniform(0.6, 1.0)
    ch, cw = int(h * scale), int(w * scale)
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = Image.fromarray(photo[top : top + ch, left : left + cw]).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    array = np.asarray(crop, np.float32) * rng.uniform(0.8, 1.2, size=3)
    if rng.random() < 0.5:
        array = array[:, ::-1]
    return np.clip(array, 0, 255).astype(np.uint8)


def write_imagenet_like(root: Path, n_images: int, n_classes: int = 8, seed: int = 0) -> tuple[Path, str]:
    """``n_images`` JPEGs in ``root/train/<class>/``, written once (reused while the count matches)."""
    from PIL import Image

    photos, source = source_photos()
    marker = root / _COMPLETE
    if marker.exists() and marker.read_text() == f"{n_images} {n_classes} {seed} {source}":
        return root, source
    shutil.rmtree(root / "train", ignore_errors=True)  # another count or source: start afresh
    rng = np.random.default_rng(seed)
    for index in range(n_images):
        folder = root / "train" / f"n{index % n_classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        width, height = (500, 375) if rng.random() < 0.7 else (375, 500)  # ImageNet: mostly landscape
        pixels = _crop(rng, photos[index % len(photos)], width, height)
        Image.fromarray(pixels).save(folder / f"img_{index:06d}.JPEG", quality=90)
    marker.write_text(f"{n_images} {n_classes} {seed} {source}")
    return root, source


def photo_batch(n_images: int, size: int, seed: int = 0) -> torch.Tensor:
    """N x 3 x S x S float32 crops of the photos, in [0, 1] (the score's target images)."""
    photos, _ = source_photos()
    rng = np.random.default_rng(seed)
    crops = [_crop(rng, photos[i % len(photos)], size, size) for i in range(n_images)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255.0).contiguous()
