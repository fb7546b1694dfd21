"""Inside a trial (a Ray worker process): `Trainer.train` with the sampled params, its checkpoints in the trial's own
dir of the experiment, every evaluation one `tune.report`.

A reused actor trains many trials in one process: the task (its data) is loaded once per process (`cached_task`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ray import tune

from tunetrain.errors import NonFiniteLossError
from tunetrain.reporting import Reporter
from tunetrain.storage import ExperimentDir, copy_down, is_file, resolve_storage, upload_dir, uri_for
from tunetrain.storage.layout import TOKEN_NAME, TRAINER_STATE_NAME
from tunetrain.tuning.lineage import Lineage, read_lineage, take_up_exploit
from tunetrain.tuning.pareto import objective_values
from tunetrain.tuning.ray.protocol import CURRENT, EVALUATION, METRICS, OBJECTIVE, objective_keys, read_ended
from tunetrain.tuning.trial import check_objectives, evaluation_report, trial_arguments

if TYPE_CHECKING:
    from tunetrain.experiment import Experiment
    from tunetrain.task import Task
    from tunetrain.tuning.config import SearchConfig


@dataclass(frozen=True)
class TrialSpec:
    """What a trial needs besides its params; shipped to workers once through `tune.with_parameters`."""

    experiment: Experiment
    config: SearchConfig
    exp_path: str  # the experiment dir within the storage's filesystem
    local: bool  # a local (or mounted) directory; else a pyarrow filesystem such as s3://


@functools.lru_cache(maxsize=4)
def cached_task(task_path: str) -> Task:
    """The task of this worker process, loaded once: a reused actor trains many trials on the same data."""
    from tunetrain.task import load_task

    return load_task(task_path)


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """One trial: `Trainer.train` with the sampled params, resumed from its latest checkpoint when it has one (a
    trial of several processes: `data_parallel.run_data_parallel_trial`)."""
    store = TrialStore(spec, tune.get_context().get_trial_id())
    try:
        if store.ended():
            return  # it ended before the driver was killed, after Ray's last snapshot: nothing to train or report
        lineage = store.lineage()  # PBT: an exploit the driver decided is taken up first (see tuning.lineage)
        if lineage is not None:
            params = lineage.params  # the trial's dir says which params are in force, whatever Ray restored
        train_trial(params, spec, store, resume=store.latest(), send=send_to_tune, lineage=lineage)
    finally:
        store.close()


def train_trial(
    params: dict[str, Any],
    spec: TrialSpec,
    store: TrialStore,
    *,
    resume: str | None,
    send: Sender | None,
    lineage: Lineage | None = None,
) -> None:
    """`Trainer.train` of a trial in this process (one of several, in a data-parallel trial), its evaluations sent
    as reports (`send`: the main process's; None on the others). `lineage`: the trial's under PBT, once it has been
    exploited."""
    import torch

    from tunetrain.loop import Trainer

    torch.set_num_threads(max(1, int(spec.config.resources_per_trial.cpu)))
    experiment = spec.experiment
    exp_dir = ExperimentDir(store.filesystem, spec.exp_path, spec.exp_path)
    logging_dir = exp_dir.tensorboard_path(store.trial_id) if spec.local else None
    args = trial_arguments(
        experiment,
        spec.config,
        store.output_dir,
        logging_dir=logging_dir,
        save_total_limit=spec.config.keep_checkpoints_per_trial,  # the best counts, the latest survives
    )
    reporter = TuneReporter(spec.config.metrics, store, send, lineage=lineage) if send is not None else None
    reporters = [reporter] if reporter is not None else []
    trainer = Trainer(cached_task(experiment.task), args, experiment.space, reporters=reporters, console=False)
    try:
        trainer.train(trial=params, resume_from_checkpoint=resume)
        if reporter is not None:
            reporter.report_if_silent(trainer.state)
    except NonFiniteLossError as exc:
        # not raised to Ray, which would retry it: from its last checkpoint the trial would diverge again. It
        # ends with a report that says why; the driver marks it errored and Optuna is told FAIL. Every process of a
        # data-parallel trial sees the same (mean) loss, and so stops alike
        if reporter is not None:
            reporter.report_error(trainer.state, f"{type(exc).__name__}: {exc}")


# a report to Tune: (the report, the trial dir a token checkpoint names, or None for a report without one)
Sender = Callable[[dict[str, Any], "str | None"], None]


def send_to_tune(report: dict[str, Any], token_for: str | None) -> None:
    """One `tune.report`, with a token checkpoint naming `token_for` (a trial dir) when given (see TuneReporter)."""
    if token_for is None:
        tune.report(report)
        return
    with tempfile.TemporaryDirectory(prefix="tunetrain-token-") as token:
        (Path(token) / TOKEN_NAME).write_text(json.dumps({"trial_dir": token_for}))
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(token))


class TrialStore:
    """A trial's checkpoints in the experiment's storage, `trials/<trial id>/checkpoint-<step>`.

    On a local or mounted directory the loop writes there itself (atomically, and rotates them). On a pyarrow
    filesystem (s3://...) it writes to a local scratch directory, and each checkpoint is copied up after it is
    saved (its trainer_state.json last: what marks a checkpoint complete), the rotation mirrored; a restarted trial
    copies the complete ones back down and resumes from the latest.
    """

    def __init__(self, spec: TrialSpec, trial_id: str) -> None:
        self.trial_id = trial_id
        self.local = spec.local
        self.filesystem = resolve_storage(spec.config.storage)[0]
        self.path = ExperimentDir(self.filesystem, spec.exp_path, spec.exp_path).trial_path(trial_id)
        self.uri = uri_for(spec.config.storage, self.path)
        if self.local:
            self.output_dir = self.path
        else:
            scratch = Path(tempfile.gettempdir()) / "tunetrain-trials" / f"{trial_id}-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            self.output_dir = str(scratch)

    def ended(self) -> bool:
        return read_ended(self.filesystem, self.path) is not None

    def lineage(self) -> Lineage | None:
        """The trial's lineage (PBT), after taking up an exploit decided for it; None for a trial never exploited."""
        return take_up_exploit(self.filesystem, self.path) or read_lineage(self.filesystem, self.path)

    def latest(self) -> str | None:
        from pyarrow import fs

        from tunetrain import checkpoint as ckpt

        # the latest that reads whole: a damaged one is moved aside (checkpoint-N.damaged) with a warning, and the one
        # before it is used (see ckpt.find_latest_usable)
        if self.local:
            latest = ckpt.find_latest_usable(self.path)
            return str(latest) if latest else None
        found = self.filesystem.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        steps = sorted(
            (ckpt.checkpoint_step(info.path), info.path)
            for info in found
            if info.type == fs.FileType.Directory and ckpt.checkpoint_step(info.path) is not None
        )
        # every complete one comes down (the loop keeps a few: the best and the latest), so that the local rotation,
        # which `persist` mirrors, sees them all; an incomplete one (its trainer_state.json missing) stays behind
        copied = {}
        for _, remote in steps:
            if is_file(self.filesystem, f"{remote}/{TRAINER_STATE_NAME}"):
                copy_down(self.filesystem, remote, Path(self.output_dir) / Path(remote).name)
                copied[Path(remote).name] = remote
        latest = ckpt.find_latest_usable(self.output_dir)
        # those it moved aside here are moved aside in the storage too: `persist` deletes what is no longer here
        storage = self.filesystem
        for name in copied.keys() - {p.name for p in ckpt.list_checkpoints(self.output_dir)}:
            aside = ckpt.aside_name(copied[name], lambda path: storage.get_file_info(path).type != fs.FileType.NotFound)
            storage.create_dir(aside, recursive=True)  # an object store has no rename: a copy, then a delete
            fs.copy_files(copied[name], aside, source_filesystem=storage, destination_filesystem=storage)
            storage.delete_dir(copied[name])
        return str(latest) if latest else None

    def fetch(self, checkpoint: str) -> str:
        """This process's own copy of one of the trial's checkpoints (named as another process's copy, or the
        storage's) from the remote storage: a data-parallel trial's workers on other nodes resume from it."""
        name = Path(checkpoint).name
        local = Path(self.output_dir) / name
        copy_down(self.filesystem, f"{self.path}/{name}", local)
        return str(local)

    def persist(self, checkpoint: Path) -> None:
        """Copy a checkpoint the loop has just saved (and rotated) up to remote storage; a no-op on a local one."""
        if self.local:
            return
        from pyarrow import fs

        from tunetrain import checkpoint as ckpt

        upload_dir(checkpoint, self.filesystem, f"{self.path}/{checkpoint.name}", marker=TRAINER_STATE_NAME)
        kept = {p.name for p in ckpt.list_checkpoints(self.output_dir)}
        found = self.filesystem.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        for info in found:
            name = Path(info.path).name
            if ckpt.checkpoint_step(name) is not None and name not in kept:
                self.filesystem.delete_dir(info.path)

    def location(self, checkpoint: str) -> str:
        """Where a checkpoint of the loop's output dir lives in the storage, by its name: the run's state may name
        it in another dir (a checkpoint copied from another trial by PBT names the donor's)."""
        return f"{self.path if self.local else self.uri}/{Path(checkpoint).name}"

    def close(self) -> None:
        if not self.local:
            shutil.rmtree(self.output_dir, ignore_errors=True)


class TuneReporter(Reporter):
    """Every evaluation becomes one `tune.report`; the checkpoint saved at it stays in the trial's own dir.

    The first and the last report of a run carry a token checkpoint for Ray (a file naming the trial's dir), for
    the snapshot Ray takes after each checkpoint: the trial is in Ray's saved state from its first evaluation on,
    and shows there as about to end at its last.
    """

    def __init__(
        self,
        metrics: str | tuple[str, ...],
        store: TrialStore,
        send: Sender = send_to_tune,
        *,
        lineage: Lineage | None = None,
    ) -> None:
        # several objectives: the first is the one the loop tracks the best of; the others ride with it
        self.metrics = metrics if isinstance(metrics, tuple) else (metrics,)
        self.metric = self.metrics[0]
        self.store = store
        self.send = send
        self.lineage = lineage
        self.params: dict[str, Any] = {}
        self.reports = 0

    def on_train_begin(self, args: Any, state: Any, params: dict[str, Any]) -> None:
        self.params = dict(params)

    def on_evaluate(self, metrics, state, control, checkpoint) -> None:
        values = evaluation_report(metrics, state)
        if control.reason == "early_stopping":  # the run's own patience ran out: this is its last report
            values["early_stopped"] = True
        if checkpoint is not None:
            self.store.persist(checkpoint)
        if state.best_model_checkpoint:
            values["best_checkpoint"] = self.store.location(state.best_model_checkpoint)
        values["params"] = self.params
        if self.reports == 0:
            values.update(self._first_report(state))
        last = state.global_step >= state.max_steps or control.should_stop
        if last:  # nothing to perturb or promote at a trial's last report (PBT, a pausing ASHA)
            values["last"] = True
        objective = state.best_metric if state.best_metric is not None else metrics[self.metric]
        report = {
            OBJECTIVE: objective,
            CURRENT: metrics[self.metric],
            EVALUATION: state.num_evaluations,
            METRICS: json.dumps(values, default=str),
        }
        if len(self.metrics) > 1:  # the other objectives, at the same (best) evaluation as the first
            check_objectives(metrics, self.metrics)
            vector = objective_values(metrics, state, self.metrics)
            report.update(zip(objective_keys(len(self.metrics))[1:], vector[1:], strict=True))
        self.reports += 1
        self.send(report, self.store.path if self.reports == 1 or last else None)

    def _first_report(self, state: Any) -> dict[str, Any]:
        """What the first report of a run adds: a resumed run's earlier evaluations (from its checkpoint), which a
        killed driver may not have written down; under PBT the trial's latest exploit (the best of the lineage it
        carries is the trial's best now), and only the evaluations it trained itself since."""
        added: dict[str, Any] = {}
        since = 0
        if self.lineage is not None and self.lineage.segments[-1].parent is not None:
            segment = self.lineage.segments[-1]
            since = segment.step
            added["exploit"] = {
                "trial_id": segment.parent,
                "step": segment.step,
                "exploits": list(self.lineage.exploits),
                "best_step": state.best_global_step,
            }
        if state.num_evaluations > 1:
            evaluations = [entry for entry in state.log_history if self.metric in entry]
            added["earlier"] = [
                {
                    **{k: v for k, v in entry.items() if isinstance(v, (int, float))},
                    "evaluation": number,
                    "params": self._params_at(entry.get("step", 0)),
                }
                for number, entry in enumerate(evaluations[:-1], start=1)
                if entry.get("step", 0) > since
            ]
        return added

    def _params_at(self, step: int) -> dict[str, Any]:
        """The params in force when the trial trained `step` (PBT changes them at its exploits)."""
        if self.lineage is None:
            return self.params
        return dict(self.lineage.segment_at(step - 1).params) if step > 0 else self.params

    def report_if_silent(self, state: Any) -> None:
        """A run resumed from the checkpoint of its last evaluation trains and evaluates nothing: it reports that
        evaluation again as its last report (the killed driver may have missed it, or the end of the trial)."""
        if self.reports or not state.num_evaluations:
            return
        last = [entry for entry in state.log_history if self.metric in entry][-1]
        metrics = {k: v for k, v in last.items() if k != "step"}
        self.on_evaluate(metrics, state, SimpleNamespace(reason=None, should_stop=True), checkpoint=None)

    def report_error(self, state: Any, message: str) -> None:
        """The trial's last report: why it ended (its evaluations so far stand, but it is not ranked)."""
        best = state.best_metric if state is not None and state.best_metric is not None else float("nan")
        evaluations = state.num_evaluations if state is not None else 0
        self.send({OBJECTIVE: best, EVALUATION: evaluations, METRICS: json.dumps({"error": message})}, None)
