"""The Optuna backend: an in-process study, `Trainer.train(trial=optuna_trial)` as the objective.

- The study lives in `storage/name/optuna.journal` (Optuna's JournalStorage), so `optuna-dashboard` and the
  `optuna` CLI can read it while the search runs, and a rerun continues it.
- ASHA is Optuna's `SuccessiveHalvingPruner`, whose rungs count evaluations: the loop reports the search metric at
  every evaluation (`trial.report(value, step=num_evaluations)`) and stops a pruned run cleanly.
- A trial's value is its best evaluation, not its last. A trial that raises is retried in this process from its
  latest checkpoint up to `max_failures` times, then marked FAIL ("errored") and the search goes on; a user error
  (ConfigError: a missing metric, a bad param) stops the whole search with its one-line message.
- Trials left RUNNING by a killed driver are failed (with the user attr `interrupted`) on the next run and their
  params re-enqueued; the new trial reuses the old one's directory and trial id, resumes from its latest checkpoint
  and replays the evaluations that checkpoint holds into Optuna, so results.parquet keeps one row per planned trial.
  A trial stopped by Ctrl-C or by a user error is marked the same way, so a fixed rerun runs it again.
- A grid search ends when the grid is exhausted, even below `num_trials`. `scheduler.max_t`, when set, ends every
  trial after that many evaluations, as Ray's ASHAScheduler does (by default the run's own budget is the last rung).
- Trials run one at a time (`max_concurrent_trials` and `resources_per_trial` apply to the ray backend).

The driver asks and tells Optuna itself rather than calling `study.optimize`: it decides per trial whether an
exception is retried, ends the trial, or stops the search, and Optuna prints no traceback for a trial already
reported as errored. `time_budget_s` works as `optimize(timeout=...)` does: no new trial starts once it has passed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError, NonFiniteLossError
from tunetrain.reporting import Reporter
from tunetrain.results import ResultsBook
from tunetrain.storage import write_local_file
from tunetrain.storage.files import damaged_message
from tunetrain.storage.layout import JOURNAL_NAME
from tunetrain.tuning.backend import Backend
from tunetrain.tuning.components import make_pruner, make_sampler
from tunetrain.tuning.pareto import objective_values, running_objectives
from tunetrain.tuning.progress import Progress
from tunetrain.tuning.trial import check_objectives, evaluation_report, max_t_for, trial_arguments

if TYPE_CHECKING:
    import optuna

    from tunetrain.args import TrainingArguments
    from tunetrain.checkpoint import TrainerState
    from tunetrain.experiment import Experiment
    from tunetrain.reporting import TrainerControl
    from tunetrain.results import SearchResult
    from tunetrain.storage import ExperimentDir
    from tunetrain.task import Task
    from tunetrain.tuning.config import SearchConfig

logger = logging.getLogger(__name__)

# user attrs of a study's trials
TRIAL_ID_ATTR = "trial_id"  # the results.parquet id; a re-run of an interrupted trial keeps the original's
OUTPUT_DIR_ATTR = "output_dir"  # where its checkpoints are; a re-run resumes from the latest there
# FAIL because the driver died, was interrupted, or stopped on a user error, not because the trial failed: the
# next run runs it again
INTERRUPTED_ATTR = "interrupted"


class OptunaBackend(Backend):
    """The search as an Optuna study in this process (see the module docstring)."""

    def __init__(
        self,
        experiment: Experiment,
        config: SearchConfig,
        exp_dir: ExperimentDir,
        *,
        console: Progress | None = None,
    ) -> None:
        super().__init__(experiment, config, exp_dir)
        self.console = console  # where progress lines and the final table go (default stderr)

    def prepare(self) -> None:
        """Refuse what this backend cannot do before anything is written."""
        if not self.exp_dir.is_local:
            raise ConfigError(
                f"`search.storage` is {self.config.storage!r}, but the optuna backend needs a local or mounted "
                "directory; use backend: ray for s3:// and other remote storage"
            )
        max_t_for(self.experiment, self.config)  # a budget too small for the first rung is refused now

    def run(self, *, resume: bool = True) -> SearchResult:
        """Run or continue the experiment's study until `config.num_trials` trials have ended (or the time budget).

        Trials ended in an earlier run count; trials an earlier run left RUNNING are run again from their
        checkpoints. The study's journal is the whole state: there is nothing else to resume from.
        """
        import optuna

        from tunetrain.task import load_task

        experiment, config, exp_dir = self.experiment, self.config, self.exp_dir
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the console shows Progress lines instead
        Path(exp_dir.path).mkdir(parents=True, exist_ok=True)
        book = ResultsBook(exp_dir.path, metric=config.metric, mode=config.mode)
        book.load()
        stream = self.console.stream if self.console is not None else None
        progress = Progress(book, config.num_trials, stream=stream)
        study = open_study(experiment, config, exp_dir)
        requeued = requeue_interrupted(study)
        if requeued:
            logger.warning(
                "resuming %d interrupted trial(s) from their checkpoints: %s", len(requeued), ", ".join(requeued)
            )
        runner = _TrialRunner(experiment, config, exp_dir, book, load_task(experiment.task))
        remaining = config.num_trials - count_ended(study)
        deadline = None if config.time_budget_s is None else time.monotonic() + config.time_budget_s
        try:
            for _ in range(max(remaining, 0)):
                if deadline is not None and time.monotonic() >= deadline:
                    logger.warning("search.time_budget_s (%ss) has passed: no new trial starts", config.time_budget_s)
                    break
                if _grid_exhausted(study):
                    break
                runner.run_one(study)
                progress.update(force=True)
        finally:
            book.flush(force=True)
        result = book.result()
        progress.final(result)
        return result


def open_study(experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir) -> optuna.Study:
    """The experiment's study in `exp_dir/optuna.journal`, created (with `points_to_evaluate` enqueued) if new."""
    import optuna

    repair_journal(exp_dir.journal_path)  # before Optuna appends a record to it (create_study appends one)
    study = optuna.create_study(
        storage=journal_storage(exp_dir.path),
        study_name=experiment.name,
        directions=["maximize" if mode == "max" else "minimize" for mode in config.modes],
        sampler=make_sampler(config, experiment.space),
        pruner=make_pruner(config, max_t_for(experiment, config)),
        load_if_exists=True,
    )
    if not study.get_trials(deepcopy=False):  # new: enqueued points would otherwise show up as trials
        for point in config.points_to_evaluate:
            study.enqueue_trial(dict(point))
    return study


def journal_storage(experiment_dir: str | Path) -> optuna.storages.JournalStorage:
    """The JournalStorage of a local experiment directory (what `optuna-dashboard PATH/optuna.journal` reads)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(f"{experiment_dir}/{JOURNAL_NAME}"))


_RECORD_START = b'{"op_code":'  # how each line of Optuna's journal begins (json.dumps of a dict, op_code first)


def repair_journal(path: str | Path) -> None:
    """Cut a line torn by a kill off the end of the journal at `path`, before Optuna appends to it again.

    Optuna writes each record as one JSON line. A kill in the middle of a write leaves the last line cut short,
    which Optuna skips when it reads, but its next record would be glued onto it (the two lost, and the journal
    unreadable after it). The torn bytes are kept beside it (`optuna.journal.torn-<time>`), with a warning. A
    journal damaged anywhere else (a line that is not one of Optuna's records) is a ConfigError naming it.
    """
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    whole = lines[-1] == b""  # the journal ends with a newline, as each of Optuna's appends does
    if whole:
        lines.pop()
    for number, line in enumerate(lines[:-1], start=1):
        if not _is_record(line):
            raise ConfigError(damaged_message(str(path), f"line {number} is not one of Optuna's records"))
    last = lines[-1] if lines else b""
    if not last or (_is_record(last) and whole):
        return
    if _is_record(last):  # a whole record, cut off just before its newline
        with path.open("ab") as journal:
            journal.write(b"\n")
        return
    if not (last.startswith(_RECORD_START) or _RECORD_START.startswith(last)):
        raise ConfigError(damaged_message(str(path), f"line {len(lines)}, its last, is not one of Optuna's records"))
    keep = len(data) - len(last) - int(whole)  # the torn line, and its newline where it has one
    torn = Path(f"{path}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    write_local_file(torn, data[keep:])
    os.truncate(path, keep)
    logger.warning(
        "%s: its last line was cut short (a kill while Optuna wrote it): %d bytes dropped, kept in %s",
        path,
        len(data) - keep,
        torn.name,
    )


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(record, dict) and isinstance(record.get("op_code"), int)


def requeue_interrupted(study: optuna.Study) -> list[str]:
    """Fail the trials a dead driver left RUNNING and enqueue each interrupted trial once more; returns their ids.

    The re-enqueued trial carries the original's trial id and directory in its user attrs. An interrupted trial
    that already has a later trial with its id (enqueued or run by an earlier rerun) is not enqueued again.
    """
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # this driver runs one trial at a time and has started none yet: every RUNNING trial is a dead one's
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        study.tell(trial.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    requeued = []
    for trial in trials:
        if trial.state != TrialState.FAIL or not trial.user_attrs.get(INTERRUPTED_ATTR):
            continue
        trial_id = _trial_id(trial)
        if any(later.number > trial.number and _trial_id(later) == trial_id for later in trials):
            continue
        output_dir = trial.user_attrs.get(OUTPUT_DIR_ATTR)
        attrs = {TRIAL_ID_ATTR: trial_id, **({OUTPUT_DIR_ATTR: output_dir} if output_dir else {})}
        study.enqueue_trial(dict(trial.params), user_attrs=attrs)
        requeued.append(trial_id)
    return requeued


def count_ended(study: optuna.Study) -> int:
    """Trials that ended on their own: COMPLETE, PRUNED, and FAIL other than interrupted."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(
        not (t.state == TrialState.FAIL and t.user_attrs.get(INTERRUPTED_ATTR))
        for t in study.get_trials(deepcopy=False, states=ended)
    )


class _TrialRunner:
    """Runs one trial of the study: trains it (with retries), records it in the book, tells Optuna how it ended."""

    def __init__(
        self, experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir, book: ResultsBook, task: Task
    ) -> None:
        self.experiment = experiment
        self.config = config
        self.exp_dir = exp_dir
        self.book = book
        self.task = task  # loaded once: every trial trains on the same data

    def run_one(self, study: optuna.Study) -> None:
        import optuna
        from optuna.trial import TrialState

        trial = study.ask()
        trial_id = _trial_id(trial)
        output_dir = trial.user_attrs.get(OUTPUT_DIR_ATTR) or self.exp_dir.trial_path(trial_id)
        resuming = TRIAL_ID_ATTR in trial.user_attrs  # set only on a re-enqueued interrupted trial
        trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        trial.set_user_attr(OUTPUT_DIR_ATTR, output_dir)
        try:
            params = self.experiment.space.sample(trial)  # the Trainer's own sampling gets the same values back
            self.book.start(trial_id, _number(trial_id), params)
            args = self._arguments(trial_id, output_dir)
            metrics = self._train(trial, trial_id, args, resuming)
        except optuna.TrialPruned as exc:
            self.book.finish(trial_id, "pruned")
            study.tell(trial, state=TrialState.PRUNED)
            logger.debug("%s %s", trial_id, exc)
        except ConfigError as exc:
            # a user error: every trial would hit it, so the search stops with the message; once it is fixed, the
            # next run runs this trial again rather than counting it as ended
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            self._fail(study, trial, trial_id, exc)
            raise
        except _TrialErrored as exc:
            self._fail(study, trial, trial_id, exc.__cause__ or exc)
        except KeyboardInterrupt:
            # not the trial's fault: the next run resumes it, as after a kill
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
            self.book.flush(force=True)
            raise
        except Exception as exc:  # our bug, outside the trial's training: end the trial, keep the traceback
            self._fail(study, trial, trial_id, exc)
            raise
        else:
            status = "stopped_early" if metrics.get("stopped") == "early_stopping" else "completed"
            self.book.finish(trial_id, status)
            if self.config.multi_objective:  # its values at its best evaluation
                objectives = self.book.trials[trial_id].objectives or [math.nan] * len(self.config.metrics)
                values = [math.nan if value is None else value for value in objectives]
                for name, value in zip(self.config.metrics, values, strict=True):
                    if not math.isfinite(value):  # Optuna fails a trial told a NaN; the results keep it completed
                        logger.warning("%s: %s is %s at its best evaluation: Optuna records the trial as failed",
                                       trial_id, name, value)  # fmt: skip
                study.tell(trial, values)
            else:
                study.tell(trial, metrics["best_metric"])

    def _arguments(self, trial_id: str, output_dir: str) -> TrainingArguments:
        # the search keeps keep_checkpoints_per_trial in the trial's own dir: the best counts, the latest survives
        return trial_arguments(
            self.experiment,
            self.config,
            output_dir,
            logging_dir=self.exp_dir.tensorboard_path(trial_id),
            save_total_limit=self.config.keep_checkpoints_per_trial,
        )

    def _train(self, trial: optuna.Trial, trial_id: str, args: TrainingArguments, resuming: bool) -> dict[str, Any]:
        """The finished run's metrics; retries from the latest checkpoint up to `max_failures` times."""
        from tunetrain import checkpoint as ckpt
        from tunetrain.loop import Trainer

        # a damaged latest checkpoint (cut short by a kill) is moved aside with a warning: the one before it is used
        resume_from = ckpt.find_latest_usable(args.output_dir) if resuming else None
        if resume_from is not None:
            _replay_evaluations(trial, self.book, trial_id, resume_from, self.config)
            logger.info("%s resumes from %s", trial_id, resume_from)
        failures = 0
        while True:
            reporters: list[Reporter] = [_BookReporter(self.book, trial_id)]
            if self.config.multi_objective:
                reporters.append(_ParetoRungReporter(trial, self.config.metrics))
            if self.config.scheduler.type == "asha" and self.config.scheduler.max_t is not None:
                reporters.append(_StopAtMaxT(self.config.scheduler.max_t))
            trainer = Trainer(self.task, args, self.experiment.space, reporters=reporters, console=False)
            try:
                output = trainer.train(resume_from_checkpoint=resume_from, trial=trial)
                break
            except Exception as exc:
                if isinstance(exc, ConfigError) or _is_pruned(exc):
                    raise
                if isinstance(exc, NonFiniteLossError):  # from its checkpoint it would diverge again: no retry
                    raise _TrialErrored(str(exc)) from exc
                if failures >= self.config.max_failures:
                    raise _TrialErrored(str(exc)) from exc
                failures += 1
                resume_from = ckpt.find_latest_usable(args.output_dir)
                logger.warning(
                    "%s raised %s; retry %d of %d from %s",
                    trial_id,
                    _one_line(exc),
                    failures,
                    self.config.max_failures,
                    resume_from or "the start",
                )
        if output.metrics.get("best_metric") is None:
            raise _TrialErrored(f"no evaluation gave a finite {args.objective_metric}")
        return output.metrics

    def _fail(self, study: optuna.Study, trial: optuna.Trial, trial_id: str, error: BaseException) -> None:
        from optuna.trial import TrialState

        if trial_id in self.book.trials:
            self.book.finish(trial_id, "errored", error=_one_line(error))
        study.tell(trial, state=TrialState.FAIL)


class _BookReporter(Reporter):
    """Feeds every evaluation of a trial, with the checkpoint saved at it, into the ResultsBook."""

    def __init__(self, book: ResultsBook, trial_id: str) -> None:
        self.book = book
        self.trial_id = trial_id

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        values = evaluation_report(metrics, state)
        # the book keeps the checkpoint only when this evaluation is the trial's best so far; the loop's rotation
        # never deletes the best checkpoint
        self.book.report(self.trial_id, values, checkpoint=str(checkpoint) if checkpoint else None)


class _ParetoRungReporter(Reporter):
    """Several objectives (Optuna's `Trial.report` takes one): each evaluation must return every objective, and the
    trial's values at each rung go to the study's `ParetoHalvingPruner`, which stops the run when they rank too low
    there. A trial's last evaluation is recorded, not judged: it ends there anyway."""

    def __init__(self, trial: optuna.Trial, metrics: tuple[str, ...]) -> None:
        self.trial = trial
        self.metrics = metrics

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        import optuna

        from tunetrain.tuning.pareto_pruner import ParetoHalvingPruner

        check_objectives(metrics, self.metrics)
        pruner = self.trial.study.pruner
        if not isinstance(pruner, ParetoHalvingPruner):  # scheduler none: nothing stops a trial
            return
        values = objective_values(metrics, state, self.metrics)
        if not pruner.report(self.trial, state.num_evaluations, values):
            return
        last = state.global_step >= state.max_steps or control.should_stop
        if not last and pruner.prune(self.trial.study, self.trial):
            shown = ", ".join(f"{name}={value:.6g}" for name, value in zip(self.metrics, values, strict=True))
            message = f"pruned at evaluation {state.num_evaluations} (step {state.global_step}, Pareto rank: {shown})"
            control.stop("pruned", optuna.TrialPruned(message))


class _StopAtMaxT(Reporter):
    """ASHA's last rung: like Ray's ASHAScheduler, a trial ends (completed) after `max_t` evaluations."""

    def __init__(self, max_t: int) -> None:
        self.max_t = max_t

    def on_evaluate(
        self, metrics: dict[str, float], state: TrainerState, control: TrainerControl, checkpoint: Path | None
    ) -> None:
        if state.num_evaluations >= self.max_t and not control.should_stop:
            control.stop("max_t")


class _TrialErrored(Exception):
    """A trial that failed after its retries: it ends as FAIL / errored and the search goes on."""


# ---------------------------------------------------------------------- private helpers


def _grid_exhausted(study: optuna.Study) -> bool:
    """A grid search ends when every point has run (asked and told by hand, Optuna's GridSampler would repeat
    points), unless a re-enqueued trial is still waiting."""
    from optuna.samplers import GridSampler
    from optuna.trial import TrialState

    if not isinstance(study.sampler, GridSampler) or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    return study.sampler.is_exhausted(study)


def _trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
    """`trial-NNNN` from the Optuna trial number, or the original's id for a re-run of an interrupted trial."""
    return trial.user_attrs.get(TRIAL_ID_ATTR) or f"trial-{trial.number:04d}"


def _number(trial_id: str) -> int:
    return int(trial_id.rsplit("-", 1)[-1])


def _replay_evaluations(
    trial: optuna.Trial, book: ResultsBook, trial_id: str, checkpoint: Path, config: SearchConfig
) -> None:
    """Report the evaluations a checkpoint holds to the trial that resumes from it, and to the book.

    The re-enqueued trial is a new Optuna trial: without them its intermediate values (on several objectives, its
    values at the rungs) would start after the checkpoint. The book may have missed the last ones (it writes at
    most every few seconds and the driver was killed); it gets them again from the first one it lacks.
    """
    from tunetrain import checkpoint as ckpt

    metric = config.metrics[0]
    evaluations = [e for e in ckpt.read_trainer_state(checkpoint).log_history if metric in e]
    recorded = {h["evaluation"] for h in book.history if h["trial_id"] == trial_id}
    first_missing = next((n for n in range(1, len(evaluations) + 1) if n not in recorded), len(evaluations) + 1)
    from tunetrain.tuning.pareto_pruner import ParetoHalvingPruner

    pruner = trial.study.pruner
    running = running_objectives(evaluations, config.metrics, config.modes)
    for number, entry in enumerate(evaluations, start=1):
        if not config.multi_objective:
            trial.report(float(entry[metric]), step=number)
        elif isinstance(pruner, ParetoHalvingPruner):  # the values at each rung
            pruner.report(trial, number, running[number - 1])
        if number >= first_missing:
            saved = ckpt.checkpoint_path(Path(checkpoint).parent, entry["step"])
            values = {metric: entry[metric], "evaluation": number, **entry}
            book.report(trial_id, values, checkpoint=str(saved) if saved.is_dir() else None)


def _is_pruned(exc: BaseException) -> bool:
    import optuna

    return isinstance(exc, optuna.TrialPruned)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (ConfigError, _TrialErrored)):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
