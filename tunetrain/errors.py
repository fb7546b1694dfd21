"""The errors tunetrain raises on purpose; all are `TunetrainError`s (anything else is our bug).

`ConfigError` and its subclasses are mistakes a user can fix (bad config, bad params, a missing checkpoint, a task
that does not import): the CLI prints them as one line on stderr and exits with code 2. `StorageError` (a full disk)
and `NonFiniteLossError` (a diverged run) are not mistakes in the command but are not our bugs either: one line on
stderr, exit code 1. Each class carries its `exit_code`; anything that is not a TunetrainError keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar


class TunetrainError(Exception):
    """The base of every error tunetrain raises on purpose; its message is the whole story (no traceback needed)."""

    exit_code: ClassVar[int] = 1  # what `tunetrain` exits with when this error ends a command


class ConfigError(TunetrainError, ValueError):
    """A user error: the message names the key or value and what was expected.

    A ValueError too, for callers that catch one.
    """

    exit_code: ClassVar[int] = 2


class CheckpointError(ConfigError):
    """A checkpoint that is missing, incomplete, or does not fit the model being trained."""


class TaskError(ConfigError):
    """A task path that does not import, names nothing, or names something that is not a task."""


class StorageError(TunetrainError, RuntimeError):
    """A checkpoint or result could not be written (a full disk, a read-only or vanished directory). What was
    written before stays complete, so the run or search resumes once the storage works again."""


class NonFiniteLossError(TunetrainError, RuntimeError):
    """The training loss became NaN or infinite: the run diverged (too high a learning rate, say). Not a mistake in
    the config but an outcome of these params: a search marks the trial errored with this message and goes on."""


class ProcessFailedError(TunetrainError, RuntimeError):
    """A process of a data-parallel run died without a tunetrain error (killed, or a bug: its traceback is above it);
    the run's other processes were stopped, and its checkpoints resume it."""
