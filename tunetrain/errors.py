"""The one exception type for mistakes a user can fix (bad config, bad params, missing files).

The CLI prints these as a single line on stderr and exits with code 2; anything else is our bug and
keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user error: the message names the key or value and what was expected."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, incomplete, or does not fit the model being trained."""


class TaskError(ConfigError):
    """A task path that does not import, names nothing, or names something that is not a task."""
