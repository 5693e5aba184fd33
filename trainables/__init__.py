"""Worker side of medseg-search: what runs inside Ray Tune trials.

Data readers, model factories, training loops, the transferability score and
checkpoints. Nothing here imports the driver package ``search``; only the Ray
trainable modules (``pretrain``) and the checkpoint bridge import Ray.
"""

from __future__ import annotations

import logging
import os

# Workers run offline: a hub lookup for weights is retried for ~23 s before it
# fails, and albumentations asks PyPI for its latest version at every import.
# Set before any of those libraries is imported by a trial process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Ray logs one INFO line per checkpoint per trial and epoch from the workers,
# which drowns the driver's per-epoch progress lines (configured by name:
# importing this package does not import Ray).
logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
