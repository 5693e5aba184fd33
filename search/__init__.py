"""Driver side of medseg-search: command line, configs, Tuner building, scheduling, reports.

Importing ``search`` sets the offline defaults for everything the driver
starts (``trainables`` sets the same for workers).
"""

from __future__ import annotations

import os

import trainables  # noqa: F401  (sets HF_HUB_OFFLINE and NO_ALBUMENTATIONS_UPDATE)

# Ray would otherwise try to send usage statistics, which fails offline.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The driver prints its own line per trial and epoch (search.progress); Tune's
# status tables would repeat it, and its hint about TensorBoard points at a
# temporary folder.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune warns about any callback slower than 0.5 s; deleting an old checkpoint
# of a large model takes longer than that and is not a problem.
os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")
# Experiment snapshots (trial states, scheduler state) are taken often on
# purpose, so that a killed driver loses at most about an epoch per trial.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

__version__ = "0.1.0"
