"""Driver side of medseg-search: command line, configs, Tuner building, scheduling, reports.

Importing ``search`` sets the offline defaults for everything the driver
starts (``trainables`` sets the same for workers).
"""

from __future__ import annotations

import os

import trainables  # noqa: F401  (sets HF_HUB_OFFLINE and NO_ALBUMENTATIONS_UPDATE)

# Ray would otherwise try to send usage statistics, which fails offline.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

__version__ = "0.1.0"
