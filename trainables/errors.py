"""Errors that are the user's to fix.

Every ``MedsegError`` carries a one-line message that names the problem and the
fix; the command line prints it without a traceback. Anything else escaping the
program is a bug in medseg-search.
"""

from __future__ import annotations


class MedsegError(Exception):
    """A problem with the user's input (config, data, checkpoint, storage)."""

    exit_code = 2  # what the command line exits with


class ConfigError(MedsegError):
    """An invalid configuration value or key."""


class DataError(MedsegError):
    """A missing, empty, malformed or unreadable dataset."""


class ModelError(MedsegError):
    """An encoder that does not exist or cannot be used as a U-Net encoder."""


class CheckpointError(MedsegError):
    """A checkpoint file that cannot be read or does not fit the encoder."""
