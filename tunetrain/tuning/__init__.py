"""Hyperparameter search: `search(experiment) -> SearchResult` on Ray Tune (default) or in-process Optuna.

An experiment keeps its state in `storage/name/`: the backend's own state (Ray's experiment state or Optuna's
journal), each trial's checkpoints and TensorBoard events, `results.parquet`, `history.parquet` and
`search.json` (how the search was started, and whether it finished). Running the same experiment again resumes
an unfinished search, shows a finished one, and starts over with `restart=True`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError

if TYPE_CHECKING:
    from tunetrain.experiment import Experiment
    from tunetrain.results import SearchResult

__all__ = ["search"]

logger = logging.getLogger(__name__)


def search(
    experiment: Experiment | str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    backend: str | None = None,
    num_trials: int | None = None,
    address: str | None = None,
    storage: str | None = None,
    gpus_per_trial: float | None = None,
    restart: bool = False,
) -> SearchResult:
    """Run the experiment's search, resume it when an unfinished one of that name exists, or show a finished one.

    `experiment` is an `Experiment` or the path of its YAML file (`overrides` are `key.path=value` strings applied
    to the file). The keyword options override the file's `search:` section, as the CLI's flags do.
    """
    from tunetrain.experiment import Experiment, load_experiment
    from tunetrain.results import read_results
    from tunetrain.tuning.common import ExperimentDir, budget_for
    from tunetrain.tuning.config import SearchConfig, with_cli_overrides

    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment, overrides)
    if experiment.space.is_empty:
        raise ConfigError("`space` is empty, but a search needs at least one param to vary")
    raw = with_cli_overrides(
        experiment.search,
        backend=backend,
        num_trials=num_trials,
        address=address,
        storage=storage,
        gpus_per_trial=gpus_per_trial,
    )
    args = experiment.training_arguments(output_dir="unused")
    config = SearchConfig.from_dict(raw, space=experiment.space, args=args)
    exp_dir = ExperimentDir.for_experiment(experiment, config)

    state = exp_dir.read_state()
    if restart and exp_dir.exists():
        logger.info("--restart: removing %s", exp_dir.uri)
        exp_dir.remove()
        state = None
    if state is not None and state.get("status") == "finished":
        logger.info("experiment %r finished earlier (%s); --restart runs it again", experiment.name, exp_dir.uri)
        result = read_results(exp_dir.path, filesystem=exp_dir.filesystem)
        print(f"\n{result.summary_line()}\n\n{result.table()}\n")
        return result
    resume = state is not None
    if resume:
        if state.get("experiment") != experiment.to_dict():
            logger.warning(
                "the experiment file changed since this search started; it continues with the settings it started "
                "with (use --restart to start over with the new ones)"
            )
        logger.info("resuming experiment %r from %s", experiment.name, exp_dir.uri)
    else:
        exp_dir.write_state({"status": "running", "experiment": experiment.to_dict(), "started_at": time.time()})
    max_t = None
    if config.scheduler.type == "asha":
        max_t = config.scheduler.resolved_max_t(budget_for(experiment) if config.scheduler.max_t is None else 0)

    if config.backend == "optuna":
        from tunetrain.tuning import optuna as backend_module

        result = backend_module.run(experiment, config, exp_dir)
    else:
        result = _run_ray(experiment, config, exp_dir, resume=resume, max_t=max_t)
    exp_dir.write_state({**(exp_dir.read_state() or {}), "status": "finished", "finished_at": time.time()})
    return result


def _run_ray(experiment: Experiment, config: Any, exp_dir: Any, *, resume: bool, max_t: int | None) -> SearchResult:
    if not config.address:
        # read by Ray when it is first imported: a single-node Ray then advertises 127.0.0.1 only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from tunetrain.tuning import ray as backend_module

    can_resume = resume and _ray_state_exists(exp_dir)
    return backend_module.run(experiment, config, exp_dir, resume=can_resume, max_t=max_t)


def _ray_state_exists(exp_dir: Any) -> bool:
    from ray import tune

    fs = None if exp_dir.is_local else exp_dir.filesystem
    return tune.Tuner.can_restore(exp_dir.uri, storage_filesystem=fs)
