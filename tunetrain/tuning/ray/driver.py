"""In the driver: the searcher and the bookkeeper, sharing one `SearchState` with the scheduler (`schedulers`).

- ASHA-stopped trials reach Optuna as PRUNED (Ray's OptunaSearch would tell them COMPLETE with their low-fidelity
  value, which misleads TPE); errored trials as FAIL.
- The bookkeeper keeps `results.parquet` / `history.parquet`, prints progress, marks each trial that ended for good
  in its dir (`ended.json`) and backs up Ray's own state.
- What the driver holds per trial is bounded for searches of thousands: once a trial has ended, the bookkeeper trims
  what Ray keeps of it to what Ray reads again (`trim_ended`); the journal mirror looks only at the trials that may
  have changed.

The three are built with the same `SearchState` (see `search_state`).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import result as ray_result
from ray.tune.search.optuna import OptunaSearch

from tunetrain.errors import ConfigError
from tunetrain.results import ResultsBook
from tunetrain.storage import ExperimentDir, resolve_storage
from tunetrain.storage.layout import JOURNAL_NAME, TRIALS_DIR
from tunetrain.tuning.progress import Progress
from tunetrain.tuning.ray import state
from tunetrain.tuning.ray.protocol import (
    CURRENT,
    EVALUATION,
    FINAL_STATUSES,
    OBJECTIVE,
    objective_keys,
    read_ended,
    values_of,
    write_ended,
)
from tunetrain.tuning.ray.search_state import SearchState

logger = logging.getLogger(__name__)

MIRROR_EVERY_S = 1.0  # how often the study is mirrored into the journal, at most (see PrunedAwareOptunaSearch)


class PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells ASHA-stopped trials to Optuna as PRUNED, not COMPLETE with a low-fidelity value."""

    def __init__(
        self,
        search_state: SearchState,
        *,
        journal: tuple[str, str] | None = None,
        running_limit: int | None = None,
        **optuna_search: Any,
    ) -> None:
        super().__init__(**optuna_search)
        self.search_state = search_state
        # trials suggested and not complete; with `running_limit`, at most that many of them that are not paused
        # (see set_max_concurrency)
        self.running_limit = running_limit
        self._live: set[str] = set()
        # the study mirrored into (experiment dir's optuna.journal path, study name), for optuna-dashboard; None: not
        # mirrored (remote storage). The study itself stays in memory, saved and restored with Ray's state: a
        # journal written as trials go runs ahead of what Ray restores after a kill
        self._journal = journal
        # trial number -> (journal trial id, state name, intermediate values count) as last mirrored
        self._mirrored: dict[int, tuple[int, str, int]] = {}
        # the numbers of those mirrored unfinished: with the trials not mirrored yet, all a mirror looks at (None:
        # not known yet, for a searcher restored from the state of a tunetrain that did not keep it)
        self._open: set[int] | None = set()
        self._mirror_study_id: int | None = None

    def __getstate__(self) -> dict[str, Any]:  # the mirror's storage is opened again where it is needed
        state = dict(self.__dict__)
        state.pop("_mirror_storage", None)
        state.pop("_mirrored_at", None)
        return state

    def mirror(self, *, force: bool = False, finished: bool = False) -> None:
        """Bring the journal up to the study: new trials added, new intermediate values, ended states. At most once
        a second unless `force` (each journal write takes a lock and a sync: a trial that starts and ends between
        two mirrors is written once, whole). With `finished` (the search is over), trials the journal holds as
        running that the study does not (a driver killed after it mirrored them, before Ray saved its state) are
        told FAIL."""
        if self._journal is None or self._ot_study is None:
            return
        now = time.monotonic()
        if not (force or finished) and now - self.__dict__.get("_mirrored_at", 0.0) < MIRROR_EVERY_S:
            return
        self._mirrored_at = now
        from optuna.trial import TrialState

        storage = self._mirror_target()
        for trial in self._unsettled(self._ot_study.get_trials(deepcopy=False)):
            seen = (trial.state.name, len(trial.intermediate_values))
            mirrored = self._mirrored.get(trial.number)
            if mirrored is None:
                journal_id = storage.create_new_trial(self._mirror_study_id, template_trial=trial)
            elif mirrored[1:] == seen:
                continue
            else:
                journal_id = mirrored[0]
                if storage.get_trial(journal_id).state.is_finished():
                    continue
                for step, value in trial.intermediate_values.items():
                    storage.set_trial_intermediate_value(journal_id, step, value)
                if trial.state.is_finished():
                    storage.set_trial_state_values(journal_id, trial.state, trial.values)
            self._mirrored[trial.number] = (journal_id, *seen)
            (self._open.discard if trial.state.is_finished() else self._open.add)(trial.number)
        if finished:
            ours = {journal_id for journal_id, _, _ in self._mirrored.values()}
            for trial in storage.get_all_trials(self._mirror_study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                if trial._trial_id not in ours:
                    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)

    def _unsettled(self, trials: list[Any]) -> list[Any]:
        """Of the study's trials (in the order of their numbers), those a mirror may have to write: the ones not
        mirrored yet and the ones mirrored unfinished (a trial mirrored finished never changes again). A mirror
        then costs what changed, not the study's size."""
        from optuna.trial import TrialState

        if self._open is None:
            self._open = {n for n, (_, state, _) in self._mirrored.items() if not TrialState[state].is_finished()}
        numbered = len(trials) >= len(self._mirrored) and all(trials[n].number == n for n in self._open)
        if not numbered:  # not in the order of their numbers (never seen): look at every one
            return list(trials)
        return [trials[n] for n in sorted(self._open)] + trials[len(self._mirrored) :]

    def _mirror_target(self) -> Any:
        storage = self.__dict__.get("_mirror_storage")
        if storage is None:
            import optuna

            from tunetrain.tuning.optuna import journal_storage, repair_journal

            path, name = self._journal
            repair_journal(f"{path}/{JOURNAL_NAME}")
            storage = journal_storage(path)
            directions = self._ot_study.directions
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
            self._mirror_study_id = study._study_id
            self._mirror_storage = storage
        return storage

    def restore(self, checkpoint_path: str) -> None:
        # Ray restores a searcher by replacing its __dict__ with the pickled one: keep the state shared with the
        # scheduler and the bookkeeper (the pickled copy is an empty one of its own)
        search_state = self.search_state
        self._open = None  # unless the state restored holds it (see _unsettled)
        super().restore(checkpoint_path)
        self.search_state = search_state

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        # Ray saves its snapshot in the driver's staging dir (this searcher's state among it), then copies it to the
        # storage: the bookkeeper seals it from there (see state)
        super().save_to_dir(checkpoint_dir, session_str)
        self.search_state.snapshot = (checkpoint_dir, session_str)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # True: Tune's ConcurrencyLimiter leaves the limit to this searcher, which counts only trials not paused
        return self.running_limit is not None

    def suggest(self, trial_id: str) -> dict | None:
        if self.running_limit is not None and len(self._live - self.search_state.paused) >= self.running_limit:
            return None  # Tune asks again later
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            self._live.add(trial_id)
        self.mirror()
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if values_of(result).get("error") or not self._knows(trial_id):
            return
        # Optuna's step is the evaluation (Ray's training_iteration starts again at 1 in a resumed trial). A trial
        # PBT exploited goes on from its donor's count, which may repeat a step it reported: Optuna keeps the first
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The reported value is ignored because", category=UserWarning)
            super().on_trial_result(trial_id, {**result, "training_iteration": result[EVALUATION]})
        self.mirror()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live.discard(trial_id)
        try:
            self._told_complete(trial_id, result, error)
        finally:
            # forced: a trial's end must reach the journal at once, before the bookkeeper (called after the searcher)
            # writes it into the results; the throttle would skip it when the trial's last result was mirrored < 1 s
            # before, and the dashboard would show a finished trial running until the next report
            self.mirror(force=True)

    def _told_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        if not self._knows(trial_id):
            return
        if values_of(result).get("error"):  # it diverged: FAIL, as Optuna does with a NaN objective
            super().on_trial_complete(trial_id, result=None, error=True)
            return
        ended = self.search_state.ended.get(trial_id)
        if ended is not None and not error:  # Ray's last result of it predates its end: tell Optuna how it ended
            if ended.status == "errored":
                super().on_trial_complete(trial_id, result=None, error=True)
                return
            if ended.status == "pruned":
                self.search_state.stopped_early.add(trial_id)
            result = _ended_result(ended)
        if trial_id in self.search_state.stopped_early and not error:
            # Ray does not pass the result at which ASHA stopped a trial to the searcher: report it here, then no
            # value with no error makes OptunaSearch tell the trial PRUNED (its intermediate values stay)
            multi_objective = isinstance(self.metric, list)  # Optuna takes no intermediate values then
            if result and OBJECTIVE in result and trial_id in self._ot_trials and not multi_objective:
                self._ot_trials[trial_id].report(result[OBJECTIVE], result[EVALUATION])
            super().on_trial_complete(trial_id, result=None, error=False)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def _knows(self, trial_id: str) -> bool:
        """Whether the study has this trial. Ray saves its searcher's state and its own in separate files; a kill or
        a full disk between the two can restore a trial Ray knows and the searcher does not (OptunaSearch then
        fails the whole search with a KeyError). Such a trial trains on; the study misses its values."""
        if trial_id in self._ot_trials:
            return True
        if trial_id not in self.search_state.unknown_trials:
            self.search_state.unknown_trials.add(trial_id)
            logger.warning("trial %s is not in the study Ray restored: Optuna is not told of its results", trial_id)
        return False


def _ended_result(ended: Any) -> dict[str, Any] | None:
    """A result that tells the searcher what a trial ended with (its record), or None where it has no value."""
    if ended.best_metric is None:
        return None
    result = {OBJECTIVE: ended.best_metric, EVALUATION: ended.evaluations}
    if ended.objectives:  # several objectives
        result.update(zip(objective_keys(len(ended.objectives)), ended.objectives, strict=True))
    return result


class Bookkeeper(tune.Callback):
    """Keeps results.parquet / history.parquet and prints progress, from the driver's view of the trials."""

    def __init__(
        self, search_state: SearchState, *, storage: str, exp_path: str, metric: str, mode: str, total: int
    ) -> None:
        self.search_state = search_state
        self.storage = storage
        self.exp_path = exp_path
        self.metric = metric
        self.mode = mode
        self.total = total
        self._book = None
        self._progress = None
        self._filesystem = None
        self._exp_dir = None
        self.tuner_state: bytes | None = None  # tuner.pkl as Ray wrote it, sealed with each snapshot (see `seal`)
        self._sealed: tuple[str, int] | None = None  # the snapshot file last sealed, and its mtime

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks into its experiment state: no open files
        kept = dict(self.__dict__)
        kept.update(_book=None, _progress=None, _filesystem=None, _exp_dir=None, tuner_state=None, _sealed=None)
        return kept

    def setup(self, **info: Any) -> None:
        self._filesystem, _ = resolve_storage(self.storage)
        self._exp_dir = ExperimentDir(self._filesystem, self.exp_path, self.exp_path)
        self._book = ResultsBook(self.exp_path, metric=self.metric, mode=self.mode, filesystem=self._filesystem)
        self._book.load()
        take_up_ends(self._book, self._exp_dir)
        self._progress = Progress(self._book, self.total, paused=lambda: len(self.search_state.paused))
        self.search_state.ended.clear()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._book.trials.get(trial.trial_id)
        ended = read_ended(self._filesystem, self._trial_path(trial)) if record is not None else None
        if ended is not None:
            # Ray's state predates this trial's end; the trial returns at once (its dir says it ended): its record
            # is the one it ended with, and the searcher is told what it ended with
            if record.status != ended["record"]["status"]:
                # the driver died between marking the trial's dir and writing the results (which may also lack
                # the trial's last evaluations: they are written every few seconds)
                self._book.restore(ended)
                record = self._book.trials[trial.trial_id]
            self.search_state.ended[trial.trial_id] = record
            logger.info(
                "trial %s had ended (%s) before the driver stopped: not run again", trial.trial_id, record.status
            )
            return
        number = record.number if record is not None else len(self._book.trials)
        self._book.start(trial.trial_id, number, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id not in self._book.trials:
            self.on_trial_start(iteration, trials, trial)
        values = values_of(result)
        if values.get("error"):
            return
        trial_id = trial.trial_id
        parent = self._new_exploit(trial_id, result, values)
        for earlier in values.get("earlier", []):  # a resumed trial's evaluations that a killed driver missed
            if parent is not None or earlier["evaluation"] > self._book.last_evaluation(trial_id):
                self._book.report(trial_id, self._recorded(earlier), params=earlier.get("params"), parent=parent)
                parent = None  # only the first evaluation after the exploit says where it came from
        self._book.report(trial_id, self._recorded(values), params=values.get("params"), parent=parent)
        if values.get("best_checkpoint"):
            self._book.trials[trial_id].best_checkpoint = values["best_checkpoint"]
        self._progress.update()

    def _new_exploit(self, trial_id: str, result: dict, values: dict[str, Any]) -> tuple[str, int] | None:
        """PBT: on the first report of a trial that has taken up an exploit the results do not hold yet, the trial's
        record takes the lineage's best (`ResultsBook.rebase`); returns (donor, step) for its history row."""
        exploit = values.get("exploit")
        record = self._book.trials[trial_id]
        if not exploit or len(exploit["exploits"]) <= len(record.parent or []):
            return None
        self._book.rebase(
            trial_id,
            params=values.get("params") or record.params,
            exploits=exploit["exploits"],
            best_metric=result.get(OBJECTIVE),
            best_step=exploit.get("best_step"),
            best_checkpoint=values.get("best_checkpoint"),
        )
        return exploit["trial_id"], exploit["step"]

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Ray calls the scheduler and the searcher first, then the callbacks, this one first: trimmed here, a
        # trial's full last result has been read by all of them but Ray's progress printer (which then reads less)
        try:
            self._trial_completed(trial)
        finally:
            trim_ended(trial, runs_again=False)  # a trial that completed never runs again (resume skips it)

    def _trial_completed(self, trial: Any) -> None:
        if trial.trial_id in self.search_state.ended:
            return
        values = values_of(trial.last_result)
        if values.get("error"):  # the trial ended itself on an error it must not be retried for (a diverged loss)
            self._finish(trial, "errored", values["error"], for_good=True)  # nor rerun on resume
            return
        if trial.trial_id in self.search_state.stopped_early:
            status = "pruned"  # by ASHA, as the Optuna backend's pruner
        elif values.get("early_stopped"):
            status = "stopped_early"  # by the run's early_stopping_patience, as in the Optuna backend
        else:
            status = "completed"
        self._finish(trial, status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _trial_error(trial)
        user_error = config_error_in(error)
        if user_error is not None:
            self.search_state.config_errors.append(str(user_error))
        # Ray's error text is the trial's traceback: its last line is "Type: message"
        message = str(user_error or error or "the trial failed").strip().splitlines()[-1]
        self._finish(trial, "errored", message)
        trim_ended(trial, runs_again=True)  # a resume runs it again (resume_errored), from its checkpoint

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.seal()

    def seal(self) -> None:
        """Seal Ray's newest snapshot, if it saved one since the last seal (see state): after each step, in which
        Ray may have saved one, and by the backend once Ray's last one is saved."""
        if self.search_state.snapshot is None or self.tuner_state is None:
            return
        staging, session = self.search_state.snapshot
        try:
            mtime = (Path(staging) / f"experiment_state-{session}.json").stat().st_mtime_ns
            if self._sealed == (session, mtime):
                return
            files = state.snapshot_in(staging, session)
            state.seal_ray_state(self._exp_dir, {**files, state.TUNER_NAME: self.tuner_state})
            self._sealed = (session, mtime)
        except OSError as exc:  # a full disk: the copy sealed last stays
            logger.debug("Ray's snapshot not sealed this time: %s", exc)
        except ConfigError as exc:  # the key went missing or bad since the search started: the same
            logger.warning("Ray's snapshot not sealed: %s", exc)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # a trial Ray retries (max_failures) had its exception pickled too: the storage's copy is never read
        trial.run_metadata.pickled_error_filename = None

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for trial in trials:  # before Ray builds its ResultGrid, which unpickles each named error from the storage
            trial.run_metadata.pickled_error_filename = None
        # a trial the killed driver had started after Ray's last snapshot is unknown to the restored search, which
        # ran another in its place: say so rather than leave it 'running' for ever
        known = {trial.trial_id for trial in trials}
        for record in self._book.trials.values():
            if record.status == "running" and record.trial_id not in known and not self.search_state.config_errors:
                reason = "lost: started after the search state was last saved, before the driver died"
                self._book.finish(record.trial_id, "errored", error=reason)
        self._book.flush(force=True)
        self._progress.final(self._book.result())

    def _finish(self, trial: Any, status: str, error: str | None = None, *, for_good: bool = False) -> None:
        if trial.trial_id not in self._book.trials:
            self.on_trial_start(0, [], trial)
        final = self._book.final_record(trial.trial_id, status, error)
        if status in FINAL_STATUSES or for_good:  # first: a trial the results show ended must never be trained again
            write_ended(self._filesystem, self._trial_path(trial), final)
        # written with the next write, a few seconds later at most: its ended.json, or Ray's state, says it ended
        self._book.finish(trial.trial_id, status, error=error, ended_at=final["record"]["ended_at"], write_now=False)
        self._progress.update()

    def _trial_path(self, trial: Any) -> str:
        return self._exp_dir.trial_path(trial.trial_id)

    def _recorded(self, values: dict[str, Any]) -> dict[str, Any]:
        """What the results keep of one evaluation's values."""
        kept = {k: v for k, v in values.items() if k in (self.metric, "evaluation", "step", "epoch", "num_processes")}
        kept.update({k: v for k, v in values.items() if k.startswith("eval_")})
        return kept


def take_up_ends(book: ResultsBook, exp_dir: ExperimentDir) -> bool:
    """Put in `book` the ends its files lack, from the trials' dirs; True when there were any.

    The results are written every few seconds, not at each trial's end (each end is in the trial's `ended.json`
    first), so a killed driver may not have written the last ends: of trials the results show running, and of
    trials that started and ended since the last write, which the results do not hold at all (Ray's snapshot may
    hold them as ended, and never start them again; or as running, and the trial returns at once: see
    `Bookkeeper.on_trial_start`)."""
    from pyarrow import fs

    trials_dir = f"{exp_dir.path}/{TRIALS_DIR}"
    found = exp_dir.filesystem.get_file_info(fs.FileSelector(trials_dir, allow_not_found=True))
    unknown = [info.base_name for info in found if info.type == fs.FileType.Directory]
    candidates = [r.trial_id for r in book.trials.values() if r.status == "running"]
    candidates += sorted(trial_id for trial_id in unknown if trial_id not in book.trials)
    taken = False
    for trial_id in candidates:
        ended = read_ended(exp_dir.filesystem, exp_dir.trial_path(trial_id))
        if ended is not None and ended["record"].get("trial_id") == trial_id:
            book.restore(ended, write_now=False)
            taken = True
    if taken:
        book.flush(force=True)
    return taken


def take_up_ends_on_disk(exp_dir: ExperimentDir, *, metric: Any, mode: Any) -> None:
    """`take_up_ends` on the experiment's own results files (before a resumed search reads them back)."""
    book = ResultsBook(exp_dir.path, metric=metric, mode=mode, filesystem=exp_dir.filesystem)
    book.load()
    take_up_ends(book, exp_dir)


# what Ray keeps of an ended trial's last result, and of its checkpoints' metrics: the keys Ray reads back (a
# restored trial's iteration count and time, whether it is done) and the values the searcher and schedulers compare.
# The rest (the evaluation's values as JSON, the config, host, pid, dates) is in results.parquet / history.parquet
_KEPT_RESULT_KEYS = frozenset(
    {
        ray_result.TRIAL_ID,
        ray_result.DONE,
        ray_result.TRAINING_ITERATION,
        ray_result.TIME_TOTAL_S,
        ray_result.TIMESTEPS_TOTAL,
        ray_result.EPISODES_TOTAL,
        ray_result.TIMESTAMP,
        EVALUATION,
        CURRENT,
    }
)


def trim_ended(trial: Any, *, runs_again: bool) -> None:
    """Trim what Ray keeps in the driver of a trial that has ended, for good or (`runs_again`) until a resume.

    Ray keeps every trial's last result (the full report, its config, host and dates), running statistics of each
    numeric key (six floats and two deques a key, which its snapshots pickle), its checkpoints' metrics (another
    copy of a report), and a cached JSON of all of that, in memory and in each snapshot of the experiment: ~10 KiB a
    trial, over the whole search. An ended trial's statistics are read by nobody (tunetrain reads its own results,
    not Ray's ResultGrid); its last result and checkpoint metrics keep what Ray reads back (see _KEPT_RESULT_KEYS).
    A trial that runs again keeps its checkpoint metrics whole: Ray restores its counters from them.
    """
    # Ray's future of the trial's actor's host and pid: an object this driver owns (and Ray keeps, outside Python)
    # for as long as the trial holds it, which is for ever once the trial has reported (read only before that)
    trial._default_result_or_future = None
    metadata = trial.run_metadata
    metadata.last_result = _kept(metadata.last_result)  # (setting an attribute drops Ray's cached JSON of it)
    metadata.metric_analysis = {}
    metadata.metric_n_steps = {}
    manager = metadata.checkpoint_manager
    if not runs_again and manager is not None:
        for checkpoint_result in {id(r): r for r in [*manager.best_checkpoint_results, manager.latest_checkpoint_result]
                                  if r is not None}.values():  # fmt: skip
            checkpoint_result.metrics = _kept(checkpoint_result.metrics)
        metadata.invalidate_cache()


def _kept(result: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (result or {}).items() if k in _KEPT_RESULT_KEYS or k.startswith(OBJECTIVE)}


def _trial_error(trial: Any) -> BaseException | None:
    """The exception a trial failed with. Ray has pickled it next to the trial in this driver's own staging dir by
    the time `on_trial_error` is called; it is read from there, and Ray is made to forget the pickle: its copy in
    the storage (which the ResultGrid would unpickle at the end of the search) is never read."""
    import ray.cloudpickle

    path = trial.pickled_error_file
    trial.run_metadata.pickled_error_filename = None  # the grid then reads the error's text (error.txt) instead
    if path and os.path.exists(path):
        with open(path, "rb") as file:
            return ray.cloudpickle.load(file)
    return trial.get_error()  # its text (error.txt), as a TuneError


def config_error_in(error: BaseException | None) -> ConfigError | None:
    """The ConfigError a trial raised, through Ray's wrapping (RayTaskError.cause, __cause__)."""
    for _ in range(10):
        if error is None:
            return None
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            error = cause
        elif isinstance(error, ConfigError):
            return error
        else:
            error = error.__cause__
    return None
