"""The Ray Tune backend: `train()` as a function trainable, Optuna's samplers through OptunaSearch, ASHA.

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
- ASHA-stopped trials reach Optuna as PRUNED (Ray's OptunaSearch would tell them COMPLETE with their
  low-fidelity value, which misleads TPE); errored trials as FAIL.
- The driver keeps `results.parquet` / `history.parquet` and prints progress; Ray's own output is silenced.
- A local Ray starts by itself on 127.0.0.1; `address` joins a cluster, whose nodes must all see the storage.

Importing this module imports Ray: `tunetrain.tuning` sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 first for a local
Ray (Ray reads it when it is imported).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from tunetrain.errors import ConfigError, NonFiniteLossError, StorageError
from tunetrain.reporting import Reporter

if TYPE_CHECKING:
    from tunetrain.experiment import Experiment
    from tunetrain.results import SearchResult
    from tunetrain.tuning.common import ExperimentDir
    from tunetrain.tuning.config import SearchConfig

logger = logging.getLogger(__name__)

OBJECTIVE = "objective"  # the trial's best value of the search metric so far: what ASHA and Optuna compare
EVALUATION = "evaluation"  # evaluations since the trial began (a resumed trial continues the count): ASHA's time
METRICS = "metrics"  # everything else of an evaluation, as one JSON string: Ray keeps running statistics of every
# numeric key of every trial in the driver's memory, so a report carries only the two numbers Ray acts on
# Trials ASHA stopped before their budget, shared by the scheduler, the searcher and the bookkeeping callback
# (all three live in the driver process; a module global survives Ray pickling them into its experiment state).
_STOPPED_EARLY: set[str] = set()
# One-line messages of user errors (ConfigError) raised inside trials: the search ends with the first of them.
_CONFIG_ERRORS: list[str] = []
# The task of each worker process, loaded once: a reused actor trains many trials on the same data.
_TASKS: dict[str, Any] = {}

_QUIET_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV / JSON / TensorBoard loggers of Ray's own: we keep ours
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_DEDUP_LOGS": "0",
}


@dataclass(frozen=True)
class _TrialSpec:
    """What a trial needs besides its params; shipped to workers once through `tune.with_parameters`."""

    experiment: Experiment
    config: SearchConfig
    exp_path: str  # the experiment dir within the storage's filesystem
    local: bool  # a local (or mounted) directory; else a pyarrow filesystem such as s3://


def connect(config: SearchConfig, exp_dir: ExperimentDir) -> bool:
    """Start or join Ray and check that the search can run there; True when this call started Ray.

    Called before anything of the experiment is written or deleted, so bad input loses nothing.
    """
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    started_here = _init_ray(config)
    try:
        _check_resources(config)
        if _cluster_address(config):
            _check_storage_on_every_node(exp_dir)
    except BaseException:
        if started_here:
            ray.shutdown()
        raise
    return started_here


def can_resume(exp_dir: ExperimentDir) -> bool:
    """Whether Ray's own state of this experiment is there to restore from."""
    path, filesystem = _location(exp_dir)
    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


def run(
    experiment: Experiment,
    config: SearchConfig,
    exp_dir: ExperimentDir,
    *,
    resume: bool,
    max_t: int | None,
) -> SearchResult:
    """Run (or, with `resume`, continue) the search on a connected Ray; returns what results.parquet holds."""
    from tunetrain.results import read_results

    _STOPPED_EARLY.clear()
    _CONFIG_ERRORS.clear()
    trainable = _trainable_for(experiment, config, exp_dir)
    if resume:
        path, filesystem = _location(exp_dir)
        _repair_ray_state(exp_dir)
        _mend_tokens(exp_dir)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=_tune_config(experiment, config, max_t),
            run_config=_run_config(experiment, config, exp_dir),
        )
    tuner.fit()
    if _CONFIG_ERRORS:
        # a user error inside a trial (a metric compute_metrics never returns, bad model params): every trial
        # would fail the same way, so the search stops and says why, in one line
        raise ConfigError(_CONFIG_ERRORS[0])
    result = read_results(exp_dir.path, filesystem=exp_dir.filesystem)
    # Ctrl-C: Tune saves its state and returns as if done; trials left running, or fewer trials than planned
    # with no time budget to explain it, mean the search is not done
    running = result.counts()["running"]
    missing = config.time_budget_s is None and len(result.trials) < _num_samples(experiment, config)
    if running or missing:
        raise KeyboardInterrupt(f"{running} trial(s) left running")
    return result


TOKEN_NAME = "tunetrain.json"  # the one file of a token checkpoint (see _TuneReporter)
_RAY_CHECKPOINT = re.compile(r"checkpoint_(\d+)")  # Ray's name for the n-th checkpoint a trial reported


def _mend_tokens(exp_dir: ExperimentDir) -> None:
    """Put back the token checkpoints Ray deleted after its last saved snapshot, before restoring from it.

    Ray keeps one checkpoint per trial (num_to_keep=1): a trial's newer token replaces the older one at once, and
    the snapshot that points to the newer one is saved (uploaded, on s3) a moment later. A driver killed in that
    moment leaves a snapshot whose token is gone, and Ray then fails to restore that trial ("Could not recover
    from checkpoint as it does not exist on storage anymore"). Tokens hold nothing a trial needs (it resumes from
    its own dir), so any token missing below a trial's newest is written again.
    """
    from pyarrow import fs

    filesystem = exp_dir.filesystem
    for trial_dir in filesystem.get_file_info(fs.FileSelector(exp_dir.path, allow_not_found=True)):
        name = trial_dir.base_name
        if trial_dir.type != fs.FileType.Directory or not name.startswith("trial_"):
            continue
        found = filesystem.get_file_info(fs.FileSelector(trial_dir.path))
        numbers = {int(m.group(1)) for m in (_RAY_CHECKPOINT.fullmatch(info.base_name) for info in found) if m}
        for number in range(max(numbers, default=0)):
            if number not in numbers:
                token = f"{trial_dir.path}/checkpoint_{number:06d}"
                filesystem.create_dir(token, recursive=True)
                with filesystem.open_output_stream(f"{token}/{TOKEN_NAME}") as out:
                    out.write(json.dumps({"trial_dir": f"{exp_dir.path}/trials/{name[len('trial_') :]}"}).encode())


_RAY_STATE = re.compile(r"experiment_state-(.+)\.json")  # Ray's snapshot of a search, one per driver session
BACKUP_DIR = "ray-state-backup"
BACKUP_EVERY_S = 10.0


def _ray_state_files(session: str) -> list[str]:
    """The files of one session's snapshot: the controller's state (JSON) and the searcher's (pickles)."""
    return [f"experiment_state-{session}.json", f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl"]


def _sessions(filesystem: Any, path: str) -> list[str]:
    """The sessions that saved a snapshot in `path`, oldest first (Ray restores from the newest)."""
    from pyarrow import fs

    found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(m.group(1) for m in (_RAY_STATE.fullmatch(info.base_name) for info in found) if m)


def _read_whole(filesystem: Any, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def _back_up_ray_state(filesystem: Any, exp_path: str) -> bool:
    """Copy Ray's newest snapshot, if whole, to `ray-state-backup/`, each file written whole.

    Ray overwrites its snapshot in place (pyarrow's copy): a full disk, or a kill in the middle, leaves it cut
    short, and Ray can then not restore the search. `_repair_ray_state` puts the backup back.
    """
    from tunetrain.tuning.common import write_whole

    sessions = _sessions(filesystem, exp_path)
    if not sessions:
        return False
    names = [name for name in _ray_state_files(sessions[-1]) if _is_file(filesystem, f"{exp_path}/{name}")]
    files = {name: _read_whole(filesystem, f"{exp_path}/{name}") for name in names}
    for name, data in files.items():  # one that is not whole (Ray is writing it): ValueError, and no backup now
        if name.startswith("experiment_state-"):
            json.loads(data)
        elif not data.endswith(b"."):  # the searcher's state is pickled (search_gen_state's too), and a pickle ends
            # with its STOP opcode
            raise ValueError(f"{name} is cut short")
    for name, data in files.items():
        write_whole(filesystem, f"{exp_path}/{BACKUP_DIR}/{name}", data)
    for old in _sessions(filesystem, f"{exp_path}/{BACKUP_DIR}")[:-1]:
        for name in _ray_state_files(old):
            if _is_file(filesystem, f"{exp_path}/{BACKUP_DIR}/{name}"):
                filesystem.delete_file(f"{exp_path}/{BACKUP_DIR}/{name}")
    return True


def _is_file(filesystem: Any, path: str) -> bool:
    from pyarrow import fs

    return filesystem.get_file_info(path).type == fs.FileType.File


def _repair_ray_state(exp_dir: ExperimentDir) -> None:
    """Before a restore: a snapshot Ray left cut short is moved aside (`.damaged`), and the backup put in its place."""
    from tunetrain.tuning.common import write_whole

    filesystem, path = exp_dir.filesystem, exp_dir.path
    sessions = _sessions(filesystem, path)
    if not sessions:
        return
    newest = _ray_state_files(sessions[-1])
    try:
        json.loads(_read_whole(filesystem, f"{path}/{newest[0]}"))
        return
    except (OSError, ValueError):
        pass
    backup = _sessions(filesystem, f"{path}/{BACKUP_DIR}")
    if not backup:
        raise StorageError(
            f"Ray's saved state of this search ({path}/{newest[0]}) was cut short (a full disk, or a kill while it was "
            f"written) before any backup of it was made: the search cannot resume; --restart starts it over"
        )
    logger.warning("Ray's saved state %s was cut short (a full disk, or a kill): resuming from its backup", newest[0])
    for name in newest:
        if _is_file(filesystem, f"{path}/{name}"):
            filesystem.move(f"{path}/{name}", f"{path}/{name}.damaged")
    for name in _ray_state_files(backup[-1]):
        if _is_file(filesystem, f"{path}/{BACKUP_DIR}/{name}"):
            write_whole(filesystem, f"{path}/{name}", _read_whole(filesystem, f"{path}/{BACKUP_DIR}/{name}"))


def _location(exp_dir: ExperimentDir) -> tuple[str, Any]:
    """The experiment's path and filesystem as Ray takes them: a path without its scheme when a filesystem is given."""
    return exp_dir.path, None if exp_dir.is_local else exp_dir.filesystem


def _init_ray(config: SearchConfig) -> bool:
    """Connect to `address`, or start a local Ray on 127.0.0.1; False when Ray was already up in this process."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
    address = _cluster_address(config)
    if address:
        where = f"{'`search.address`' if config.address else 'RAY_ADDRESS'} is {address!r}"
        _probe_address(address, where)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{where}, but no Ray cluster answers there: {reason}") from None
        return True
    # "local": a Ray of its own, even where `ray start` left a cluster's address behind (/tmp/ray/ray_current_cluster,
    # which a bare ray.init() would join, and fail on once that cluster is gone)
    ray.init(address="local", _node_ip_address="127.0.0.1", **common)
    return True


def _cluster_address(config: SearchConfig) -> str | None:
    """The cluster to join: `search.address`, else RAY_ADDRESS (set by Ray for a job submitted to a cluster)."""
    return config.address or os.environ.get("RAY_ADDRESS") or None


def _probe_address(address: str, where: str) -> None:
    """Fail in seconds when no cluster is there (ray.init would retry for minutes)."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address_or_die

    if address.startswith("ray://"):
        host, _, port = address[len("ray://") :].partition(":")
        port = port or "10001"
    else:
        try:
            host, _, port = canonicalize_bootstrap_address_or_die(address).rpartition(":")
        except (ConnectionError, ValueError) as exc:
            raise ConfigError(f"{where}, but no running Ray cluster was found: {exc}") from None
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}, but nothing answers at {host}:{port}: {exc}") from None


def _check_resources(config: SearchConfig) -> None:
    """Fail now, not after waiting forever, when no node can ever hold one trial."""

    cpu, gpu = config.resources_per_trial.cpu, config.resources_per_trial.gpu
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPU + {n.get('GPU', 0):g} GPU" for n in nodes) or "no live node"
    raise ConfigError(
        f"`search.resources_per_trial` asks for {cpu:g} CPU + {gpu:g} GPU per trial, but no node of the Ray "
        f"cluster has that much ({have})"
    )


def _check_storage_on_every_node(exp_dir: ExperimentDir) -> None:
    """A marker the driver writes must be readable from every node, or trials could not save or resume."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    marker = f"{exp_dir.path}/.storage-check-{uuid.uuid4().hex}"
    exp_dir.filesystem.create_dir(exp_dir.path, recursive=True)
    with exp_dir.filesystem.open_output_stream(marker) as stream:
        stream.write(b"tunetrain")
    try:
        check = ray.remote(num_cpus=0)(_can_read)
        nodes = [node for node in ray.nodes() if node.get("Alive")]
        futures = {
            node["NodeManagerAddress"]: check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(exp_dir.uri, marker)
            for node in nodes
        }
        blind = [address for address, future in futures.items() if not _answer(future)]
    finally:
        exp_dir.filesystem.delete_file(marker)
    if blind:
        raise ConfigError(
            f"`search.storage` {exp_dir.uri!r} is not reachable from Ray node(s) {', '.join(blind)}: use a directory "
            "shared by every node (e.g. NFS) or a URI such as s3://bucket/path"
        )


def _answer(future: Any) -> bool:
    try:
        return bool(ray.get(future, timeout=60))
    except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError):
        return False


def _can_read(uri: str, marker: str) -> bool:
    from pyarrow import fs

    try:
        if "://" in uri:
            filesystem, _ = fs.FileSystem.from_uri(uri)
        else:
            filesystem = fs.LocalFileSystem()
        return filesystem.get_file_info(marker).type == fs.FileType.File
    except Exception:  # any failure to reach the storage is the answer "no"
        return False


def _trainable_for(experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir) -> Any:
    spec = _TrialSpec(experiment=experiment, config=config, exp_path=exp_dir.path, local=exp_dir.is_local)
    resources = {"cpu": config.resources_per_trial.cpu, "gpu": config.resources_per_trial.gpu}
    return tune.with_resources(tune.with_parameters(_run_trial, spec=spec), resources)


def _tune_config(experiment: Experiment, config: SearchConfig, max_t: int | None) -> Any:

    from tunetrain.tuning.config import make_sampler

    searcher = _PrunedAwareOptunaSearch(
        space=experiment.space.define_by_run,
        metric=OBJECTIVE,
        mode=config.mode,
        sampler=make_sampler(config, experiment.space),
        points_to_evaluate=[dict(p) for p in config.points_to_evaluate] or None,
    )
    scheduler = None
    if config.scheduler.type == "asha":
        scheduler = _EarlyStopRecordingASHA(
            time_attr=EVALUATION,
            metric=OBJECTIVE,
            mode=config.mode,
            max_t=max_t,
            grace_period=config.scheduler.grace_period,
            reduction_factor=config.scheduler.reduction_factor,
        )
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=_num_samples(experiment, config),
        max_concurrent_trials=config.max_concurrent_trials,
        time_budget_s=config.time_budget_s,
        reuse_actors=True,
        trial_dirname_creator=_trial_dirname,
    )


def _num_samples(experiment: Experiment, config: SearchConfig) -> int:
    """num_trials, but never more than a grid sampler has points (Optuna would repeat them)."""
    if config.sampler != "grid":
        return config.num_trials
    size = 1
    for values in experiment.space.grid().values():
        size *= len(values)
    return min(config.num_trials, size)


def _run_config(experiment: Experiment, config: SearchConfig, exp_dir: ExperimentDir) -> Any:

    path, filesystem = _location(exp_dir)
    return tune.RunConfig(
        name=experiment.name,
        storage_path=path.rsplit("/", 1)[0],
        storage_filesystem=filesystem,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # the token checkpoints (see _TuneReporter)
        callbacks=[
            _Bookkeeper(
                storage=config.storage,
                exp_path=exp_dir.path,
                metric=config.metric,
                mode=config.mode,
                total=config.num_trials,
            )
        ],
    )


# ---------------------------------------------------------------------- inside a trial (a Ray worker)


def _run_trial(params: dict[str, Any], spec: _TrialSpec) -> None:
    """One trial: `Trainer.train` with the sampled params, resumed from its latest checkpoint when it has one."""
    import torch

    from tunetrain.loop import Trainer
    from tunetrain.task import load_task
    from tunetrain.tuning.common import trial_arguments

    torch.set_num_threads(max(1, int(spec.config.resources_per_trial.cpu)))
    trial_id = tune.get_context().get_trial_id()
    store = _TrialStore(spec, trial_id)
    if store.ended():
        return  # it ended before the driver was killed, after Ray's last snapshot: nothing to train or report
    experiment = spec.experiment
    if experiment.task not in _TASKS:
        _TASKS[experiment.task] = load_task(experiment.task)
    logging_dir = f"{spec.exp_path}/tensorboard/{trial_id}" if spec.local else None
    try:
        args = trial_arguments(
            experiment,
            spec.config,
            store.output_dir,
            logging_dir=logging_dir,
            save_total_limit=spec.config.keep_checkpoints_per_trial,  # the best counts, the latest survives
        )
        reporter = _TuneReporter(spec.config.metric, store)
        trainer = Trainer(_TASKS[experiment.task], args, experiment.space, reporters=[reporter], console=False)
        try:
            trainer.train(trial=params, resume_from_checkpoint=store.latest())
            reporter.report_if_silent(trainer.state)
        except NonFiniteLossError as exc:
            # not raised to Ray, which would retry it: from its last checkpoint the trial would diverge again. It
            # ends with a report that says why; the driver marks it errored and Optuna is told FAIL
            reporter.report_error(trainer.state, f"{type(exc).__name__}: {exc}")
    finally:
        store.close()


class _TrialStore:
    """A trial's checkpoints in the experiment's storage, `trials/<trial id>/checkpoint-<step>`.

    On a local or mounted directory the loop writes there itself (atomically, and rotates them). On a pyarrow
    filesystem (s3://...) it writes to a local scratch directory, and each checkpoint is copied up after it is
    saved (its trainer_state.json last: what marks a checkpoint complete), the rotation mirrored; a restarted trial
    copies the complete ones back down and resumes from the latest.
    """

    def __init__(self, spec: _TrialSpec, trial_id: str) -> None:
        self.path = f"{spec.exp_path}/trials/{trial_id}"
        self.local = spec.local
        if self.local:
            from pyarrow import fs

            self.filesystem = fs.LocalFileSystem()
            self.output_dir = self.path
        else:
            from tunetrain.tuning.config import resolve_storage

            self.filesystem = resolve_storage(spec.config.storage)[0]
            self.uri = f"{spec.config.storage.split('://', 1)[0]}://{self.path}"
            scratch = Path(tempfile.gettempdir()) / "tunetrain-trials" / f"{trial_id}-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            self.output_dir = str(scratch)

    def ended(self) -> bool:
        return _ended(self.filesystem, self.path) is not None

    def latest(self) -> str | None:
        from pyarrow import fs

        from tunetrain import checkpoint as ckpt

        if self.local:
            latest = ckpt.find_latest(self.path)
            return str(latest) if latest else None
        found = self.filesystem.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        steps = sorted(
            (ckpt.checkpoint_step(info.path), info.path)
            for info in found
            if info.type == fs.FileType.Directory and ckpt.checkpoint_step(info.path) is not None
        )
        # every complete one comes down (the loop keeps a few: the best and the latest), so that the local rotation,
        # which `persist` mirrors, sees them all; an incomplete one (its trainer_state.json missing) stays behind
        latest = None
        for _, remote in steps:
            if self.filesystem.get_file_info(f"{remote}/{ckpt.TRAINER_STATE_NAME}").type == fs.FileType.File:
                local = Path(self.output_dir) / Path(remote).name
                local.mkdir(parents=True, exist_ok=True)
                fs.copy_files(remote, str(local), source_filesystem=self.filesystem)
                latest = str(local)
        return latest

    def persist(self, checkpoint: Path) -> None:
        """Copy a checkpoint the loop has just saved (and rotated) up to remote storage; a no-op on a local one."""
        if self.local:
            return
        from pyarrow import fs

        from tunetrain import checkpoint as ckpt

        remote = f"{self.path}/{checkpoint.name}"
        self.filesystem.create_dir(remote, recursive=True)
        files = sorted(checkpoint.iterdir(), key=lambda p: p.name == ckpt.TRAINER_STATE_NAME)  # the marker last
        for file in files:
            fs.copy_files(str(file), f"{remote}/{file.name}", destination_filesystem=self.filesystem)
        kept = {p.name for p in ckpt.list_checkpoints(self.output_dir)}
        found = self.filesystem.get_file_info(fs.FileSelector(self.path, allow_not_found=True))
        for info in found:
            name = Path(info.path).name
            if ckpt.checkpoint_step(name) is not None and name not in kept:
                self.filesystem.delete_dir(info.path)

    def location(self, checkpoint: str) -> str:
        """Where a checkpoint of the loop's output dir lives in the storage."""
        return checkpoint if self.local else f"{self.uri}/{Path(checkpoint).name}"

    def close(self) -> None:
        if not self.local:
            shutil.rmtree(self.output_dir, ignore_errors=True)


ENDED_NAME = "ended.json"  # in a trial's dir, written by the driver when the trial has ended for good


def _ended(filesystem: Any, trial_path: str) -> dict[str, Any] | None:
    """What a trial ended with (its final record and history rows, see `ResultsBook.final_record`), or None while
    it has not ended (or errored: it may be resumed)."""
    from tunetrain.tuning.common import read_json

    try:
        ended = read_json(filesystem, f"{trial_path}/{ENDED_NAME}")
        return ended if ended["record"]["status"] else None
    except (OSError, ValueError, KeyError, TypeError):  # none there (None["record"]), or not ours to read
        return None


def _write_ended(filesystem: Any, trial_path: str, final: dict[str, Any]) -> None:
    from tunetrain.tuning.common import write_json

    write_json(filesystem, f"{trial_path}/{ENDED_NAME}", final)


class _TuneReporter(Reporter):
    """Every evaluation becomes one `tune.report`; the checkpoint saved at it stays in the trial's own dir.

    The first and the last report of a run carry a token checkpoint for Ray (a file naming the trial's dir), for
    the snapshot Ray takes after each checkpoint: the trial is in Ray's saved state from its first evaluation on,
    and shows there as about to end at its last.
    """

    def __init__(self, metric: str, store: _TrialStore) -> None:
        self.metric = metric
        self.store = store
        self.reports = 0

    def on_evaluate(self, metrics, state, control, checkpoint) -> None:
        from tunetrain.tuning.common import evaluation_report

        values = evaluation_report(metrics, state)
        if control.reason == "early_stopping":  # the run's own patience ran out: this is its last report
            values["early_stopped"] = True
        if checkpoint is not None:
            self.store.persist(checkpoint)
        if state.best_model_checkpoint:
            values["best_checkpoint"] = self.store.location(state.best_model_checkpoint)
        if self.reports == 0 and state.num_evaluations > 1:
            # a resumed run: its earlier evaluations too (from its checkpoint), which a killed driver may not have
            # written down
            earlier = [entry for entry in state.log_history if self.metric in entry][:-1]
            values["earlier"] = [
                {**{k: v for k, v in entry.items() if isinstance(v, (int, float))}, "evaluation": number}
                for number, entry in enumerate(earlier, start=1)
            ]
        objective = state.best_metric if state.best_metric is not None else metrics[self.metric]
        report = {OBJECTIVE: objective, EVALUATION: state.num_evaluations, METRICS: json.dumps(values, default=str)}
        self.reports += 1
        if self.reports > 1 and state.global_step < state.max_steps and not control.should_stop:
            tune.report(report)
            return
        with tempfile.TemporaryDirectory(prefix="tunetrain-token-") as token:
            (Path(token) / TOKEN_NAME).write_text(json.dumps({"trial_dir": self.store.path}))
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(token))

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
        tune.report({OBJECTIVE: best, EVALUATION: evaluations, METRICS: json.dumps({"error": message})})


# ---------------------------------------------------------------------- in the driver


class _EarlyStopRecordingASHA(ASHAScheduler):
    """ASHA that records which trials it stopped before their budget (max_t)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if _values(result).get("error"):  # the trial's last report, ending it: no rung for it
            return self.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get(EVALUATION, 0) < self._max_t:
            _STOPPED_EARLY.add(trial.trial_id)
        return decision


class _PrunedAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells ASHA-stopped trials to Optuna as PRUNED, not COMPLETE with a low-fidelity value."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if _values(result).get("error"):
            return
        # Optuna's step is the evaluation (Ray's training_iteration starts again at 1 in a resumed trial)
        super().on_trial_result(trial_id, {**result, "training_iteration": result[EVALUATION]})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if _values(result).get("error"):  # it diverged: FAIL, as Optuna does with a NaN objective
            super().on_trial_complete(trial_id, result=None, error=True)
            return
        ended = _ENDED.get(trial_id)
        if ended is not None and not error:  # Ray's last result of it predates its end: tell Optuna how it ended
            if ended.status == "errored":
                super().on_trial_complete(trial_id, result=None, error=True)
                return
            if ended.status == "pruned":
                _STOPPED_EARLY.add(trial_id)
            result = (
                {OBJECTIVE: ended.best_metric, EVALUATION: ended.evaluations} if ended.best_metric is not None else None
            )
        if trial_id in _STOPPED_EARLY and not error:
            # Ray does not pass the result at which ASHA stopped a trial to the searcher: report it here, then no
            # value with no error makes OptunaSearch tell the trial PRUNED (its intermediate values stay)
            if result and OBJECTIVE in result and trial_id in self._ot_trials:
                self._ot_trials[trial_id].report(result[OBJECTIVE], result[EVALUATION])
            super().on_trial_complete(trial_id, result=None, error=False)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class _Bookkeeper(tune.Callback):
    """Keeps results.parquet / history.parquet and prints progress, from the driver's view of the trials."""

    def __init__(self, *, storage: str, exp_path: str, metric: str, mode: str, total: int) -> None:
        self.storage = storage
        self.exp_path = exp_path
        self.metric = metric
        self.mode = mode
        self.total = total
        self._book = None
        self._progress = None
        self._filesystem = None
        self._backed_up = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Ray pickles callbacks into its experiment state: no open files
        state = dict(self.__dict__)
        state.update(_book=None, _progress=None, _filesystem=None)
        return state

    def setup(self, **info: Any) -> None:
        from tunetrain.results import ResultsBook
        from tunetrain.tuning.common import Progress
        from tunetrain.tuning.config import resolve_storage

        self._filesystem, _ = resolve_storage(self.storage)
        self._book = ResultsBook(self.exp_path, metric=self.metric, mode=self.mode, filesystem=self._filesystem)
        self._book.load()
        self._progress = Progress(self._book, self.total)
        _ENDED.clear()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._book.trials.get(trial.trial_id)
        ended = _ended(self._filesystem, self._trial_path(trial)) if record is not None else None
        if ended is not None:
            # Ray's state predates this trial's end; the trial returns at once (its dir says it ended): its record
            # is the one it ended with, and the searcher is told what it ended with
            if record.status != ended["record"]["status"]:
                # the driver died between marking the trial's dir and writing the results (which may also lack
                # the trial's last evaluations: they are written every few seconds)
                self._book.restore(ended)
                record = self._book.trials[trial.trial_id]
            _ENDED[trial.trial_id] = record
            logger.info(
                "trial %s had ended (%s) before the driver stopped: not run again", trial.trial_id, record.status
            )
            return
        number = record.number if record is not None else len(self._book.trials)
        self._book.start(trial.trial_id, number, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if trial.trial_id not in self._book.trials:
            self.on_trial_start(iteration, trials, trial)
        values = _values(result)
        if values.get("error"):
            return
        for earlier in values.get("earlier", []):  # a resumed trial's evaluations that a killed driver missed
            if earlier["evaluation"] > self._book.last_evaluation(trial.trial_id):
                self._book.report(trial.trial_id, self._recorded(earlier))
        self._book.report(trial.trial_id, self._recorded(values))
        if values.get("best_checkpoint"):
            self._book.trials[trial.trial_id].best_checkpoint = values["best_checkpoint"]
        self._progress.update()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in _ENDED:
            return
        error = _values(trial.last_result).get("error")
        if error:  # the trial ended itself on an error it must not be retried for (a diverged loss)
            self._finish(trial, "errored", error, for_good=True)  # nor rerun on resume
            return
        if trial.trial_id in _STOPPED_EARLY:
            status = "pruned"  # by ASHA, as the Optuna backend's pruner
        elif _values(trial.last_result).get("early_stopped"):
            status = "stopped_early"  # by the run's early_stopping_patience, as in the Optuna backend
        else:
            status = "completed"
        self._finish(trial, status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _trial_error(trial)
        user_error = _config_error_in(error)
        if user_error is not None:
            _CONFIG_ERRORS.append(str(user_error))
        # Ray's error text is the trial's traceback: its last line is "Type: message"
        message = str(user_error or error or "the trial failed").strip().splitlines()[-1]
        self._finish(trial, "errored", message)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._backed_up > BACKUP_EVERY_S:
            try:
                if _back_up_ray_state(self._filesystem, self.exp_path):
                    self._backed_up = time.monotonic()
            except (OSError, ValueError, KeyError) as exc:  # a full disk, or Ray writing it now: the last one stays
                logger.debug("no backup of Ray's state this time: %s", exc)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # a trial the killed driver had started after Ray's last snapshot is unknown to the restored search, which
        # ran another in its place: say so rather than leave it 'running' for ever
        known = {trial.trial_id for trial in trials}
        for record in self._book.trials.values():
            if record.status == "running" and record.trial_id not in known and not _CONFIG_ERRORS:
                reason = "lost: started after the search state was last saved, before the driver died"
                self._book.finish(record.trial_id, "errored", error=reason)
        self._book.flush(force=True)
        self._progress.final(self._book.result())

    def _finish(self, trial: Any, status: str, error: str | None = None, *, for_good: bool = False) -> None:
        if trial.trial_id not in self._book.trials:
            self.on_trial_start(0, [], trial)
        final = self._book.final_record(trial.trial_id, status, error)
        if status in _FINAL or for_good:  # first: a trial the results show ended must never be trained again
            _write_ended(self._filesystem, self._trial_path(trial), final)
        self._book.finish(trial.trial_id, status, error=error, ended_at=final["record"]["ended_at"])
        self._progress.update()

    def _trial_path(self, trial: Any) -> str:
        return f"{self.exp_path}/trials/{trial.trial_id}"

    def _recorded(self, values: dict[str, Any]) -> dict[str, Any]:
        """What the results keep of one evaluation's values."""
        kept = {k: v for k, v in values.items() if k in (self.metric, "evaluation", "step", "epoch")}
        kept.update({k: v for k, v in values.items() if k.startswith("eval_")})
        return kept


# ended for good (ended.json); an errored trial may run again (resume_errored), unless it ended itself (diverged)
_FINAL = ("completed", "stopped_early", "pruned")
# Trials whose end the results recorded but Ray's restored state did not: trial id -> its TrialRecord
_ENDED: dict[str, Any] = {}


def _values(result: dict | None) -> dict[str, Any]:
    """What a trial reported of one evaluation (see _TuneReporter)."""
    if not result or METRICS not in result:
        return {}
    return json.loads(result[METRICS])


def _trial_error(trial: Any) -> BaseException | None:
    """The exception a trial failed with. Ray has written it next to the trial (in the driver's staging dir, not
    yet the storage, which `trial.get_pickled_error()` reads) by the time `on_trial_error` is called."""
    import ray.cloudpickle

    path = trial.pickled_error_file
    if path and os.path.exists(path):
        with open(path, "rb") as file:
            return ray.cloudpickle.load(file)
    return trial.get_error()


def _config_error_in(error: BaseException | None) -> ConfigError | None:
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


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"
