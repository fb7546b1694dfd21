"""The interface a search backend implements, and the backends by name.

A backend is built for one search (the experiment, its checked `SearchConfig`, its `ExperimentDir`) and used by the
driver (`tunetrain.tuning.driver.search`) in this order:

1. `prepare()`: connect and check everything that can refuse the search (a cluster, its resources, the storage, the
   budget). It runs before anything of the experiment is written or deleted, so bad input loses nothing.
2. `can_resume()`: whether the backend's own state of an earlier run is there to continue.
3. `run(resume=...)`: run (or continue) the search until it is done; returns what `results.parquet` holds. It raises
   `KeyboardInterrupt` when the search stopped before it was done (Ctrl-C), and `ConfigError` for a user error that
   every trial would hit.
4. `close()`: always, after `prepare()`: release what `prepare()` took (a Ray that it started).

A new backend is a subclass of `Backend` in a module of its own plus one entry in `config.BACKENDS` (its name and
where its class is), which the driver imports only when a search chooses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunetrain.experiment import Experiment
    from tunetrain.results import SearchResult
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.config import SearchConfig


class Backend:
    """One search on one backend (see the module docstring for the order of the calls)."""

    def __init__(self, experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir) -> None:
        self.experiment = experiment
        self.config = config
        self.exp_dir = exp_dir

    def prepare(self) -> None:
        """Connect and check; raise ConfigError for what cannot run. Writes nothing of the experiment."""

    def can_resume(self) -> bool:
        """Whether this backend's state of an earlier run of the experiment is there to continue."""
        return True

    def run(self, *, resume: bool) -> SearchResult:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `prepare` took."""
