"""One error hierarchy for everything a user can get wrong.

The library raises these with messages written for people (what is wrong, which file, how to fix it); the CLI
turns any :class:`FsdistillError` into one line on stderr and exit code 2. Anything else is a bug (exit 1).
"""

from __future__ import annotations

import errno

__all__ = [
    "FsdistillError",
    "DataError",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "DependencyError",
    "TrainingError",
    "disk_full",
]


class FsdistillError(Exception):
    """Base class of user-facing errors (bad input, bad option, bad file)."""


class DataError(FsdistillError):
    """A support folder, image or mask cannot be used as given."""


class CheckpointError(FsdistillError):
    """An artifact directory or weights file is missing, corrupt, foreign or from a newer version."""


class ConfigError(FsdistillError):
    """An option or configuration file has a bad value or an unknown key."""


class DeviceError(FsdistillError):
    """The requested device is not available on this machine."""


class DependencyError(FsdistillError):
    """An optional package that this command needs is not installed (the message names the pip extra)."""


class TrainingError(FsdistillError):
    """Training cannot go on as configured (its loss diverged to inf or NaN: a learning rate too high)."""


def disk_full(exc: OSError) -> bool:
    """Whether a failed write ran out of room (a full disk, a quota, a file-size limit): then the message's fix is
    space, not what is in the way."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
