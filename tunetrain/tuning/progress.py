"""What the user watches while a search runs: a line when a trial ends (or every few seconds), the top-k table at
the end."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunetrain.results import ResultsBook, SearchResult


class Progress:
    """What the user watches: a line when a trial ends (or every `every_s`), and the top-k table at the end."""

    def __init__(
        self,
        book: ResultsBook,
        total: int,
        *,
        stream: Any = None,
        every_s: float = 5.0,
        paused: Callable[[], int] | None = None,
    ) -> None:
        self.book = book
        self.total = total
        self.paused = paused  # how many of the running trials wait, paused (PBT, a pausing ASHA)
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._last = 0.0

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        paused = self.paused() if self.paused is not None else 0
        line = self.book.result().summary_line(total=self.total, paused=paused)
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=self.stream, flush=True)

    def final(self, result: SearchResult, k: int = 5) -> None:
        print(f"\n{result.summary_line()}\n\n{result.table(k)}\n", file=self.stream, flush=True)
