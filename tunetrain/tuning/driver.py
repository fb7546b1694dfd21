"""The search driver: `search(experiment) -> SearchResult` on Ray Tune (default) or in-process Optuna.

An experiment keeps its state in `storage/name/`: the backend's own state (Ray's experiment state or Optuna's
journal), each trial's checkpoints and TensorBoard events, `results.parquet`, `history.parquet` and
`search.json` (how the search was started, and whether it finished). Running the same experiment again resumes
an unfinished search, shows a finished one, and starts over with `restart=True`.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError, StorageError
from tunetrain.experiment import Experiment, experiment_from_dict, load_experiment
from tunetrain.results import read_results
from tunetrain.storage import ExperimentDir, ExperimentLock
from tunetrain.tuning.config import BACKENDS, SearchConfig, with_cli_overrides

if TYPE_CHECKING:
    from tunetrain.results import SearchResult
    from tunetrain.tuning.backend import Backend

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
    if not isinstance(experiment, Experiment):
        experiment = load_experiment(experiment, overrides)
    options = {"backend": backend, "num_trials": num_trials, "address": address, "storage": storage}
    options["gpus_per_trial"] = gpus_per_trial
    config = _config(experiment, options)
    exp_dir = ExperimentDir.open(config.storage, experiment.name)
    with ExperimentLock(exp_dir):  # one driver per experiment; the state is read under the lock
        state = None if restart else exp_dir.read_state()
        if state is not None:
            experiment, config = _as_started(experiment, config, state, options)
        if state is not None and state.get("status") == "finished":
            logger.info("experiment %r finished earlier (%s); --restart runs it again", experiment.name, exp_dir.uri)
            result = read_results(exp_dir.path, filesystem=exp_dir.filesystem)
            logger.info("%s\n\n%s\n", result.summary_line(), result.table())
            return result
        return _run(experiment, config, exp_dir, started=state is not None, restart=restart)


def _as_started(
    experiment: Experiment, config: SearchConfig, state: dict[str, Any], options: dict[str, Any]
) -> tuple[Experiment, SearchConfig]:
    """The experiment and config a search continues with: those it started with (as Ray restores a search with its
    settings, so does tunetrain, on both backends), on the backend it started on."""
    started_on = state.get("backend")  # None in a search.json written before the backend was recorded
    if started_on is not None and config.backend != started_on:
        raise ConfigError(
            f"experiment {experiment.name!r} started on the {started_on} backend, but this run asks for "
            f"{config.backend}: a search continues on the backend it started on (--backend {started_on}), or "
            f"--restart starts it over on {config.backend}"
        )
    if state.get("experiment") == experiment.to_dict():
        return experiment, config
    started_with = state.get("experiment", {}).get("task") if isinstance(state.get("experiment"), dict) else None
    if not _same_task(started_with, experiment.task):
        # the task is code: it comes from the file the user runs, never from the experiment dir (whoever can write
        # the storage could name their own there)
        raise ConfigError(
            f"experiment {experiment.name!r} started with task {started_with!r}, but the file names "
            f"{experiment.task!r}: a search continues only with the task it started with; name it again, or "
            "--restart starts the search over with the new one"
        )
    logger.warning(
        "the experiment file (or --set / flags) changed since this search started; it continues with the "
        "settings it started with, at this storage and address (use --restart to start over with the new ones)"
    )
    # the settings it started with; the task (code) always the file's, which is the same one (see _same_task)
    experiment = dataclasses.replace(experiment_from_dict(state["experiment"]), task=experiment.task)
    kept = {"address": options["address"], "storage": options["storage"], "backend": started_on}
    return experiment, _config(experiment, kept)


def _same_task(started_with: Any, task: str) -> bool:
    """Whether the task a search started with is the file's: the same name, or a task file of the same name and
    the same bytes (a copy of the project, or a search.json written when task paths were kept relative)."""
    if started_with == task:
        return True
    if not isinstance(started_with, str) or started_with.count(":") != 1 or task.count(":") != 1:
        return False
    (old_module, old_attr), (module, attr) = started_with.split(":"), task.split(":")
    old_file, file = Path(old_module).expanduser(), Path(module).expanduser()
    if old_attr != attr or not module.endswith(".py") or old_file.name != file.name:
        return False
    try:
        return old_file.read_bytes() == file.read_bytes()
    except OSError:
        return False


def _run(
    experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir, *, started: bool, restart: bool
) -> SearchResult:
    """Run the search on its backend (continue it when `started`); search.json says when it finished."""
    # everything that can refuse the search (cluster, resources, storage, budget) runs before anything is deleted or
    # written
    if config.backend == "ray":
        _start_ray_early(config)
    try:
        runner = backend_class(config.backend)(experiment, config, exp_dir)
        runner.prepare()
    except BaseException:
        if config.backend == "ray":
            from tunetrain.tuning.ray import cluster

            cluster.abandon()  # a no-op once prepare took the start up
        raise
    try:
        if restart and exp_dir.exists():
            logger.info("--restart: removing %s", exp_dir.uri)
            exp_dir.remove()
        if not started:
            begun = {"status": "running", "experiment": experiment.to_dict(), "backend": config.backend}
            exp_dir.write_state({**begun, "started_at": time.time()})
        else:
            logger.info("resuming experiment %r from %s", experiment.name, exp_dir.uri)
        try:
            result = runner.run(resume=started and runner.can_resume())
        except StorageError:
            raise
        except Exception as exc:
            storage_error = _as_storage_error(exc, exp_dir)
            if storage_error is None:
                raise
            raise storage_error from exc
    finally:
        runner.close()
    exp_dir.write_state({**(exp_dir.read_state() or {}), "status": "finished", "finished_at": time.time()})
    return result


def _start_ray_early(config: SearchConfig) -> None:
    """Begin Ray's start (a local Ray takes seconds) in the background, before the backend's module imports Ray Tune
    (about a second more) and prepares the search; its `prepare` takes the start up (see tuning.ray.cluster)."""
    if not config.address:
        # read by Ray when it is first imported: a single-node Ray then advertises 127.0.0.1 only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from tunetrain.tuning.ray import cluster

    cluster.start_in_background(config)


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass `search.backend` names (imported now: the ray backend imports Ray)."""
    module, _, attr = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _as_storage_error(exc: Exception, exp_dir: ExperimentDir) -> StorageError | None:
    """A StorageError saying what to do, when failing storage is behind `exc`."""
    full = _storage_failure(exc)
    if full is None:
        return None
    reason = os.strerror(full.errno).lower() if full.errno else str(full)
    return StorageError(
        f"the search stopped: cannot write to {exp_dir.uri}: {reason}; what was written is "
        f"kept: make room (or fix the storage), then run the same command again to resume it"
    )


# a full disk or quota, a read-only or unwritable storage: the search can go on once someone fixes it
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _storage_failure(exc: BaseException) -> OSError | None:
    """The OSError of failing storage behind `exc` (through Ray's wrapping: causes and contexts), if any."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, StorageError):
            return OSError(str(error))
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            return error
        linked = (error.__cause__, error.__context__, getattr(error, "cause", None))
        todo += [e for e in linked if isinstance(e, BaseException)]
    return None


def _config(experiment: Experiment, options: dict[str, Any]) -> SearchConfig:
    if experiment.space.is_empty:
        raise ConfigError("`space` is empty, but a search needs at least one param to vary")
    raw = with_cli_overrides(experiment.search_section(), **options)
    return SearchConfig.from_dict(raw, space=experiment.space, args=experiment.train)
