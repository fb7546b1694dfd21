"""Data-parallel trials (and final fits) on Ray Train: `train()` on N workers of a `TorchTrainer` (Ray Train's V2
API), torch.distributed set up by Ray Train (gloo on CPUs, nccl on GPUs), the loop's accelerate taking it from there.

- A Tune trial whose `resources_per_trial.workers` is above 1 is a coordinator: it reserves a token itself, starts
  a TorchTrainer whose workers reserve `cpu` / `gpu` each, and relays the main worker's reports to Tune (through a
  Ray queue: Ray Train's own relay, TuneReportCallback, carries metrics but no checkpoint, and our token
  checkpoints are what make Ray snapshot its state). ASHA stopping the trial ends the coordinator's actor, and with
  it the TorchTrainer it owns.
- Ray Train's workers live in a placement group of their own, which outlives a coordinator that Tune stops (an
  ASHA stop, the end of the budget): Ray Train's cleaner of it watches its controller through the State API, which
  a Ray without its dashboard (ours, for a fast start) does not answer, so the next trial would wait for ever for
  its CPUs. The coordinator's Trainable removes it as Tune stops the trial (`cleanup`); a killed driver's job ends,
  and Ray removes its placement groups with it.
- The main worker chooses the checkpoint to resume from and writes every checkpoint (with each worker's RNG
  states); every worker loads it. A worker that fails fails the TorchTrainer (no retry of its own), so the trial
  fails, and Tune retries it (max_failures) from its last checkpoint.
- Worker processes are not reused between trials: a TorchTrainer starts its worker group anew (Ray allows no
  reuse across `fit` calls). bench/ddp_scaling.py measures what that start costs.
"""

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunetrain.errors import TunetrainError

if TYPE_CHECKING:
    from tunetrain.tuning.ray.worker import TrialSpec

# the placement group of this process's TorchTrainer (a coordinator's: one trial a process, actors are not reused)
_PLACEMENT_GROUP: dict[str, Any] = {}
# what a data-parallel trial's coordinator reserves (bytes of memory, as Ray counts it): a token; it waits on workers
COORDINATOR_MEMORY = 1 << 20
# Ray Train's settings for our TorchTrainers (its controller takes them from the coordinator's environment): its
# poll of the workers every 0.5 s, not 2 (an end seen sooner), and no preemption watcher (an actor more to start;
# a preempted trial is Tune's to retry, from its own checkpoint). Measured (bench/ddp_scaling.py --ray, 2 workers
# doing nothing): 13.4 s a fit by default, 12.0 s with these (and Ray Train's metrics off)
RAY_TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# how often the coordinator looks at the relay queue, and at whether the TorchTrainer has ended
_POLL_S = 0.2


def data_parallel_trainable(spec: TrialSpec) -> type:
    """The Tune Trainable of a data-parallel trial: `run_data_parallel_trial`, whose stop (cleanup) removes the
    workers' placement group before Tune ends the actor."""
    from ray import tune
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(tune.with_parameters(run_data_parallel_trial, spec=spec))

    class DataParallelTrial(base):  # type: ignore[misc, valid-type]
        def cleanup(self) -> None:
            try:
                _remove_placement_group()
            finally:
                super().cleanup()

    return DataParallelTrial


def run_data_parallel_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """A Tune trial on `workers` Ray Train workers: the coordinator's side (it runs in the trial's Tune actor)."""
    from ray import tune

    from tunetrain.tuning.ray.worker import TrialStore, send_to_tune

    trial_id = tune.get_context().get_trial_id()
    store = TrialStore(spec, trial_id)
    try:
        if store.ended():
            return  # it ended before the driver was killed, after Ray's last snapshot: nothing to train or report
    finally:
        store.close()
    resources = spec.config.resources_per_trial
    run_on_workers(
        _trial_worker,
        {"params": params, "spec": spec, "trial_id": trial_id},
        workers=resources.workers,
        cpu=resources.cpu,
        gpu=resources.gpu,
        name=f"tunetrain-{trial_id}",
        on_item=lambda item: send_to_tune(*item),
    )


def run_on_workers(
    worker: Callable[[dict[str, Any]], None],
    config: dict[str, Any],
    *,
    workers: int,
    cpu: float,
    gpu: float,
    name: str,
    on_item: Callable[[Any], None],
) -> None:
    """`worker(config)` on `workers` Ray Train workers (each with `cpu` CPUs and `gpu` GPUs). What the workers put
    on `config["relay"]` is handed to `on_item` in this thread, in order, until the last is handled; a tunetrain
    error a worker raised is raised here as it was (a trial's ConfigError stops the search). The workers' placement
    group is known here for `_remove_placement_group`."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    for key, value in RAY_TRAIN_ENV.items():
        os.environ.setdefault(key, value)
    relay = Queue(maxsize=1, actor_options={"num_cpus": 0})  # the main worker waits while a report is handled
    per_worker = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    trainer = TorchTrainer(
        worker,
        train_loop_config={**config, "relay": relay},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu > 0, resources_per_worker=per_worker),
        run_config=RunConfig(
            name=f"{name}-{uuid.uuid4().hex[:8]}",
            # Ray Train's own files (we report no checkpoint to it): a scratch dir of the node, never the experiment
            storage_path=f"{tempfile.gettempdir()}/tunetrain-ray-train",
            failure_config=FailureConfig(max_failures=0),  # the trial's retry is Tune's, from its own checkpoint
        ),
    )
    outcome: dict[str, BaseException] = {}
    ended = threading.Event()

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # raised in the coordinator's thread below
            outcome["error"] = exc
        finally:
            ended.set()

    threading.Thread(target=fit, name="tunetrain-torch-trainer", daemon=True).start()
    try:
        while True:
            try:
                item = relay.get(timeout=_POLL_S)
            except Empty:
                if ended.is_set() and relay.empty():  # a worker's put returns before it does: nothing can follow
                    break
                continue
            if isinstance(item, _PlacementGroup):
                _PLACEMENT_GROUP["current"] = item.placement_group
                continue
            on_item(item)
    finally:
        if ended.is_set():
            relay.shutdown()  # its actor (a trial's ends with the trial's actor anyway)
    if "error" in outcome:
        raise _workers_error(outcome["error"]) from None


def _trial_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker of a data-parallel trial: `train()` in this process, the main worker's reports relayed
    to the coordinator."""
    import ray.train

    from tunetrain.tuning.ray.worker import TrialStore, train_trial

    spec, relay = config["spec"], config["relay"]
    main = ray.train.get_context().get_world_rank() == 0
    if main:
        relay.put(_PlacementGroup(ray.util.get_current_placement_group()))
    store = TrialStore(spec, config["trial_id"])
    try:
        # the main worker chooses (a damaged latest is moved aside there, once); the others load the same one
        resume = _from_main(store.latest() if main else None)
        if resume is not None and not main and not store.local:
            resume = store.fetch(resume)  # its own copy of it, from the remote storage
        train_trial(
            config["params"], spec, store, resume=resume, send=(lambda report, token: relay.put((report, token)))
            if main else None,
        )  # fmt: skip
    finally:
        store.close()


class _PlacementGroup:
    """What the main worker first puts on the relay: the placement group the workers run in."""

    def __init__(self, placement_group: Any) -> None:
        self.placement_group = placement_group


def _remove_placement_group() -> None:
    """Remove the placement group of this process's TorchTrainer, if it is still there: its workers end with it."""
    from ray.util.placement_group import placement_group_table, remove_placement_group

    placement_group = _PLACEMENT_GROUP.pop("current", None)
    if placement_group is not None and placement_group_table(placement_group).get("state") != "REMOVED":
        remove_placement_group(placement_group)


def _from_main(value: Any) -> Any:
    """The main worker's `value` in every worker (a broadcast over the process group Ray Train set up)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _workers_error(error: BaseException) -> BaseException:
    """The error a worker raised, when it is a tunetrain error (through Ray Train's and Ray's wrapping); else
    Ray Train's own, which carries every worker's traceback."""
    failures = getattr(error, "worker_failures", None) or {}
    for rank in sorted(failures):
        cause: BaseException | None = failures[rank]
        for _ in range(10):
            if cause is None or isinstance(cause, TunetrainError):
                break
            inner = getattr(cause, "cause", None)
            cause = inner if isinstance(inner, BaseException) else cause.__cause__
        if isinstance(cause, TunetrainError):
            return cause
    return error
