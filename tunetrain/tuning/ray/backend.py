"""`RayBackend`: the search as a Ray Tune Tuner, wired from the parts of this package.

- Each evaluation of a trial is one `ray.tune.report(metrics)`; ASHA's rungs count evaluations (the reported
  `evaluation`, which a resumed trial continues). The checkpoint saved at each evaluation stays in the trial's own
  directory in the experiment (`trials/<id>/`, rotated by the loop: the best and the latest), and a trial that
  Ray restarts (FailureConfig) or restores resumes from the latest one there, through the loop's exact resume.
- Ray snapshots its whole experiment state (every trial, the pickled study) after each checkpoint reported to it,
  so that a restore finds the trials it knew of: after every evaluation that would cost more than the training of
  small trials, and grows with the trial count. A trial reports Ray a token checkpoint only at its first and last
  evaluation of a run: the snapshot then holds every trial that has trained, and which ones are done. One that
  ended between the last snapshot and a killed driver (an ASHA stop, say) is not trained again on resume: the
  driver marks every ended trial in its dir.
- Actors are reused between trials and a worker process loads the task (its data) once.
- The driver keeps `results.parquet` / `history.parquet` and prints progress; Ray's own output is silenced.
- A local Ray starts by itself on 127.0.0.1; `address` joins a cluster, whose nodes must all see the storage.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ray import tune

from tunetrain.errors import ConfigError
from tunetrain.results import ResultsBook, read_history, read_results
from tunetrain.tuning.backend import Backend
from tunetrain.tuning.components import make_ray_scheduler, make_sampler, pauses_trials
from tunetrain.tuning.explore import check_mutations_keep_shape, pbt_mutations
from tunetrain.tuning.ray import cluster, state
from tunetrain.tuning.ray.data_parallel import COORDINATOR_MEMORY, data_parallel_trainable
from tunetrain.tuning.ray.driver import Bookkeeper, PrunedAwareOptunaSearch, take_up_ends_on_disk
from tunetrain.tuning.ray.protocol import OBJECTIVE, objective_keys
from tunetrain.tuning.ray.schedulers import ExactPBT, ParetoASHA, PromotingASHA
from tunetrain.tuning.ray.sealed_fs import sealed_view
from tunetrain.tuning.ray.search_state import SearchState
from tunetrain.tuning.ray.worker import TrialSpec, run_trial
from tunetrain.tuning.trial import max_t_for

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tunetrain.experiment import Experiment
    from tunetrain.results import SearchResult
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.config import SearchConfig


class RayBackend(Backend):
    """The search on a local Ray or a Ray cluster (see the module docstring)."""

    def __init__(self, experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir) -> None:
        super().__init__(experiment, config, exp_dir)
        self.max_t: int | None = None  # the scheduler's last rung, from `prepare`
        self.started_ray = False  # whether `prepare` started a local Ray (which `close` shuts down)

    def prepare(self) -> None:
        """Start or join Ray and check that the search can run there; compute the scheduler's last rung."""
        # while Ray starts, when the driver began it (see cluster); a refusal here: the driver abandons that start
        self.max_t = max_t_for(self.experiment, self.config)  # may load the task
        if self.config.scheduler.type == "pbt":
            mutations = pbt_mutations(self.config.scheduler, self.experiment.space)
            check_mutations_keep_shape(self.experiment, mutations, "search.scheduler.hyperparam_mutations")
        self.started_ray = cluster.connect(self.config, self.exp_dir)

    def can_resume(self) -> bool:
        return state.can_resume(self.exp_dir)

    def run(self, *, resume: bool) -> SearchResult:
        """Run (or, with `resume`, continue) the search; returns what results.parquet holds."""
        trainable = self._trainable()
        if resume:
            # the ends a killed driver had not written yet, into the results, before the restored scheduler reads them
            take_up_ends_on_disk(self.exp_dir, metric=self.config.metric, mode=self.config.mode)
            tuner, tuner_state = self._restore(trainable)
        else:
            search_state = SearchState()  # one per search; a restored search unpickles its own (see search_state)
            tuner = tune.Tuner(
                trainable, tune_config=self._tune_config(search_state), run_config=self._run_config(search_state)
            )
            tuner_state = _tuner_state(tuner)
            # tuner.pkl alone, before Ray's first snapshot: a search killed before that one starts anew
            # (state.can_resume) rather than being refused for want of a sealed copy
            state.seal_ray_state(self.exp_dir, {state.TUNER_NAME: tuner_state})
        bookkeeper = _bookkeeper_of(tuner)
        bookkeeper.tuner_state = tuner_state  # sealed with each of Ray's snapshots (see state)
        # a restored bookkeeper names where the search ran before: an experiment moved since lives here now
        bookkeeper.storage, bookkeeper.exp_path = self.config.storage, self.exp_dir.path
        if resume:
            self._restore_scheduler(tuner._local_tuner._tune_config.scheduler)
        fit_started = time.monotonic()
        tuner.fit()
        bookkeeper.seal()  # Ray's last snapshot, saved as fit ended (Ctrl-C included)
        out_of_time = (
            self.config.time_budget_s is not None and time.monotonic() - fit_started >= self.config.time_budget_s
        )
        user_errors = bookkeeper.search_state.config_errors
        if user_errors:
            # a user error inside a trial (a metric compute_metrics never returns, bad model params): every trial
            # would fail the same way, so the search stops and says why, in one line
            raise ConfigError(user_errors[0])
        result = read_results(self.exp_dir.path, filesystem=self.exp_dir.filesystem)
        # Ctrl-C: Tune saves its state and returns as if done; trials left running, or fewer trials than planned
        # with no time budget to explain it, mean the search is not done
        running = result.counts()["running"]
        searcher = tuner._local_tuner._tune_config.search_alg  # the one Ray ran (restored, on a resume)
        if running and out_of_time:
            searcher.mirror(finished=True)
            return self._end_by_budget()
        missing = self.config.time_budget_s is None and len(result.trials) < self.num_samples()
        if running or missing:
            searcher.mirror(force=True)
            raise KeyboardInterrupt(f"{running} trial(s) left running")
        searcher.mirror(finished=True)  # the journal's trials Ray's state lost told FAIL
        return result

    def _restore_scheduler(self, scheduler: Any) -> None:
        """A restored scheduler is the one the search was built with, as Ray pickled it then: it learns where the
        experiment is now (PBT copies between its trial dirs) and what the history says (a pausing ASHA's rungs)."""
        if isinstance(scheduler, ExactPBT):
            scheduler.exp_dir = self.exp_dir
        elif isinstance(scheduler, ParetoASHA):
            scheduler.take_up_history(read_history(self.exp_dir.path, filesystem=self.exp_dir.filesystem))
        elif isinstance(scheduler, PromotingASHA):
            result = read_results(self.exp_dir.path, filesystem=self.exp_dir.filesystem, missing_ok=True)
            running = {t.trial_id for t in result.trials if t.status == "running"} if result else set()
            scheduler.take_up_history(read_history(self.exp_dir.path, filesystem=self.exp_dir.filesystem), running)

    def _end_by_budget(self) -> SearchResult:
        """The time budget ran out (Tune stopped every trial, and told nobody): the search is finished, and the
        trials still training are recorded as out of time, with what they had evaluated."""
        book = ResultsBook(self.exp_dir.path, metric=self.config.metric, mode=self.config.mode,
                           filesystem=self.exp_dir.filesystem)  # fmt: skip
        book.load()
        for record in list(book.trials.values()):
            if record.status == "running":
                book.finish(record.trial_id, "timed_out")
        logger.warning(
            "search.time_budget_s (%ss) ran out: the search ends here, its trials still training recorded as "
            "timed_out", self.config.time_budget_s,
        )  # fmt: skip
        return book.result()

    def _restore(self, trainable: Any) -> tuple[tune.Tuner, bytes]:
        """The Tuner Ray saved, from the copy of its state this user's tunetrain sealed (see state), token
        checkpoints deleted early put back; and the tuner.pkl it restored from."""
        sealed = state.restore_sealed(self.exp_dir)
        state.mend_tokens(self.exp_dir)
        # Ray reads its state back from the storage for a while after this: through a view in which those files are
        # the sealed copy whatever the storage holds by then (see sealed_fs)
        view = sealed_view(self.exp_dir.filesystem, self.exp_dir.path, sealed)
        try:
            tuner = tune.Tuner.restore(
                self.exp_dir.path, trainable=trainable, resume_errored=True, storage_filesystem=view
            )
        except (AttributeError, ImportError) as exc:  # its pickles name classes this version does not have
            raise ConfigError(
                f"Ray's saved state of this search names code this version of tunetrain does not have ({exc}): "
                "finish it with the version that started it, or start it over with --restart"
            ) from None
        return tuner, sealed[state.TUNER_NAME]

    def close(self) -> None:
        cluster.stop(self.started_ray)

    def num_samples(self) -> int:
        """num_trials, but never more than a grid sampler has points (Optuna would repeat them)."""
        if self.config.sampler != "grid":
            return self.config.num_trials
        size = 1
        for values in self.experiment.space.grid().values():
            size *= len(values)
        return min(self.config.num_trials, size)

    def _trainable(self) -> Any:
        spec = TrialSpec(
            experiment=self.experiment, config=self.config, exp_path=self.exp_dir.path, local=self.exp_dir.is_local
        )
        per_trial = self.config.resources_per_trial
        resources = {"cpu": per_trial.cpu, "gpu": per_trial.gpu}
        if per_trial.workers > 1:
            # a coordinator: its Ray Train workers reserve the trial's CPUs and GPUs; it reserves a token of memory
            # (Tune takes no empty request, and a share of a CPU would leave a whole one short for the workers)
            coordinator = {"cpu": 0, "gpu": 0, "memory": COORDINATOR_MEMORY}
            return tune.with_resources(data_parallel_trainable(spec), coordinator)
        return tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)

    def _tune_config(self, search_state: SearchState) -> tune.TuneConfig:
        config, space = self.config, self.experiment.space
        # a paused trial holds no resources: under a scheduler that pauses, the searcher counts the trials running
        # (Tune's own limit counts paused ones too, and would wait for ever on trials paused at a rung). PBT's
        # population is every trial at once: the resources decide how many of them train at a time
        pausing = pauses_trials(config)
        running_limit = self._concurrency() if pausing and config.scheduler.type != "pbt" else None
        if config.scheduler.type == "pbt" and config.max_concurrent_trials < config.num_trials:
            logger.info(
                "PBT: the population is all %d trials at once (max_concurrent_trials, %d, is not used): the "
                "resources decide how many train at a time, the others wait their turn", config.num_trials,
                config.max_concurrent_trials,
            )  # fmt: skip
        searcher = PrunedAwareOptunaSearch(
            search_state,
            space=space.define_by_run,
            # several objectives: a list of each (Ray's OptunaSearch then tells Optuna the trial's values at its end)
            metric=list(objective_keys(len(config.metrics))) if config.multi_objective else OBJECTIVE,
            mode=list(config.modes) if config.multi_objective else config.mode,
            sampler=make_sampler(config, space),
            points_to_evaluate=[dict(p) for p in config.points_to_evaluate] or None,
            journal=(self.exp_dir.path, self.experiment.name) if self.exp_dir.is_local else None,
            running_limit=running_limit,
        )
        scheduler = make_ray_scheduler(
            config, max_t=self.max_t, search_state=search_state, space=space, exp_dir=self.exp_dir,
            num_samples=self.num_samples(),
        )  # fmt: skip
        return tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=self.num_samples(),
            max_concurrent_trials=None if pausing else self._concurrency(),
            time_budget_s=config.time_budget_s,
            # a data-parallel trial's actor owns its TorchTrainer: ended with the trial, so that its workers end too
            reuse_actors=config.resources_per_trial.workers == 1,
            trial_dirname_creator=trial_dirname,
        )

    def _concurrency(self) -> int:
        """max_concurrent_trials, but no more data-parallel trials than the cluster holds at once: Tune cannot see
        their workers' resources, and a TorchTrainer waiting for workers gives up after a minute (the trial errors)."""
        wanted, per_trial = self.config.max_concurrent_trials, self.config.resources_per_trial
        if per_trial.workers == 1:
            return wanted
        fits = max(1, cluster.worker_slots(per_trial.cpu, per_trial.gpu) // per_trial.workers)
        if fits < wanted:
            logger.warning(
                "search.max_concurrent_trials is %d, but the Ray cluster holds %d trial(s) of %d workers at once: "
                "%d run at a time", wanted, fits, per_trial.workers, fits,
            )  # fmt: skip
        return min(wanted, fits)

    def _run_config(self, search_state: SearchState) -> tune.RunConfig:
        path, filesystem = state.location(self.exp_dir)
        bookkeeper = Bookkeeper(
            search_state,
            storage=self.config.storage,
            exp_path=self.exp_dir.path,
            metric=self.config.metric,
            mode=self.config.mode,
            total=self.config.num_trials,
        )
        return tune.RunConfig(
            name=self.experiment.name,
            storage_path=path.rsplit("/", 1)[0],
            storage_filesystem=filesystem,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.config.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the token checkpoints (see worker.TuneReporter)
            callbacks=[bookkeeper],
        )


def _tuner_state(tuner: tune.Tuner) -> bytes:
    """tuner.pkl as Ray has just written it to the storage, pickled again from the Tuner in memory (not read back:
    what is sealed must be what this process wrote)."""
    import ray.cloudpickle

    return ray.cloudpickle.dumps(tuner._local_tuner.__getstate__())


def _bookkeeper_of(tuner: tune.Tuner) -> Bookkeeper:
    """The Tuner's bookkeeper: the one built with it, or, for a restored Tuner, the one Ray restored with it."""
    callbacks = tuner._local_tuner.get_run_config().callbacks or []
    return next(callback for callback in callbacks if isinstance(callback, Bookkeeper))


def trial_dirname(trial: Any) -> str:
    return f"{state.RAY_TRIAL_PREFIX}{trial.trial_id}"
