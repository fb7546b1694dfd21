"""`SearchState`: what the scheduler, the searcher and the bookkeeper of one Ray search tell each other.

All three live in the driver process and are built with the same object (no module globals: two searches in one
process keep their own). Ray pickles the three together into the Tuner's state (tuner.pkl), which keeps them
sharing one after a restore; it then restores the searcher's own state separately, by replacing its `__dict__`,
which `PrunedAwareOptunaSearch.restore` undoes for this one attribute. A state pickles as an empty one, so a
restored search starts with a fresh state, as a new one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SearchState:
    """What the scheduler, the searcher and the bookkeeper of one search tell each other."""

    stopped_early: set[str] = field(default_factory=set)  # trials ASHA stopped before their budget
    ended: dict[str, Any] = field(default_factory=dict)  # trial id -> TrialRecord: ended before Ray's state knew
    config_errors: list[str] = field(default_factory=list)  # one-line user errors raised inside trials
    unknown_trials: set[str] = field(default_factory=set)  # trials Ray restored that its searcher's state lacks
    paused: set[str] = field(default_factory=set)  # trials a scheduler paused: they hold no place among those running
    # where and under what session Ray last saved its snapshot in this driver (the searcher sees it; the
    # bookkeeper seals what it finds there)
    snapshot: tuple[str, str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # what a search state holds is this driver session's: a restored search starts a fresh one

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()
