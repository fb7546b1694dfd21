"""GPU packing: K trials sharing one GPU (gpu = 1/K), side by side in one run for K = 1, 2, 4, 8.

For each K, one `tunetrain.search` on a local Ray (started once, its start-up measured apart) of `--waves` x K
trials of the MNIST-1D CNN (`tunetrain.tasks.mnist1d:cnn`), K at a time, each with `resources_per_trial:
{cpu: --cpus-per-trial, gpu: 1/K}`; random sampler, no scheduler, so every trial runs its full budget. Only
learning_rate is sampled (the CNN's width is fixed by `--channels`): every trial does the same work for every K.
Each trial evaluates and saves a checkpoint every epoch, as any search trial does.

What each trial did comes from the loop's own clocks, which a search keeps in the trial's TensorBoard events
(`tensorboard/TRIAL/`): the events file is opened when training begins (after set-up, just before the first step),
and the hparams summary written at the end holds `train_runtime` and `train_samples` (HF Trainer's meaning:
the loop's wall time, its evaluations and checkpoints included). The driver's start of each trial is
`started_at` in results.parquet. Per K:

- busy: the mean train_runtime; per-trial samples/s: the mean of train_samples / train_runtime; aggregate: K x
  that (K trials train at once), and against K = 1: aggregate / (K x aggregate at K = 1), the packing efficiency;
- end to end: all trials' samples / the search's wall time (start-up and scheduling included);
- start-up: from the driver's start of a trial (Ray starts it once its worker process is up) to its first step,
  on a fresh worker (each slot's first: imports, CUDA context, the task's data) and on a reused one (cold / warm);
- set-up: from the call of `tunetrain.search` to the driver's start of the first trial (the search's set-up and
  the first worker process's); wind-down: from a trial's
  last step to the driver's record of its end (final report, the loop's end, Ray's bookkeeping);
- overhead per trial, cold / warm: a slot's time besides training, from its previous trial's end (or the
  search's start) to this trial's end, less train_runtime (trials are placed in slots by their start and end);
- overhead per trial slot (the target's): (wall x K - sum of train_runtime) / trials: all of the above, and
  the search's end, spread over the trials. The cold start of each slot weighs 1/waves in it.

    python bench/gpu_packing.py [--k 1 2 4 8] [--epochs 10] [--waves 3] [--cpus-per-trial 1] [--channels 32]
    python bench/gpu_packing.py --cpu --k 1 2

Targets (issue 5): aggregate >= 0.9 x K of one trial for K <= 4; <= 0.5 s of overhead per trial slot.

--cpu is a CPU stand-in for a machine without a GPU, and labelled so: the K trials share `--cpus` logical CPUs
instead (cpu = cpus / K, gpu = 0, train.use_cpu) and each trains on one torch thread (the loop would set int(cpu)
threads: 2 for K = 1). Its figures say how the search packs trials, not how a GPU does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray on 127.0.0.1, before Ray is imported
os.environ.setdefault("OMP_NUM_THREADS", "1")

GPU_TASK = "tunetrain.tasks.mnist1d:cnn"
# --cpu: the same task, each trial on one torch thread. model_init runs in the trial's worker after the loop has
# set torch's threads from resources_per_trial.cpu, so setting them there wins.
CPU_TASK = """
import dataclasses

import torch

from tunetrain import load_task


def cnn():
    task = load_task("tunetrain.tasks.mnist1d:cnn")
    model_init = task.model_init

    def one_thread_model_init(params):
        torch.set_num_threads(1)
        return model_init(params)

    return dataclasses.replace(task, model_init=one_thread_model_init)
"""


def packed_search(root: Path, k: int, cli: argparse.Namespace) -> dict:
    """One search of waves x K trials, K at a time; what it measured."""
    import tunetrain
    from tunetrain.experiment import experiment_from_dict

    if cli.cpu:
        task, resources = f"{root / 'cpu_task.py'}:cnn", {"cpu": cli.cpus / k, "gpu": 0}
    else:
        task, resources = GPU_TASK, {"cpu": cli.cpus_per_trial, "gpu": 1 / k}
    experiment = experiment_from_dict(
        {
            "name": f"packing-k{k}",
            "task": task,
            "train": {"num_train_epochs": cli.epochs, "per_device_train_batch_size": cli.batch_size,
                      "per_device_eval_batch_size": 500, "eval_strategy": "epoch", "logging_strategy": "epoch",
                      "metric_for_best_model": "accuracy", "use_cpu": cli.cpu},
            "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                      "channels": {"type": "categorical", "choices": [cli.channels]}},
            "search": {"num_trials": cli.waves * k, "max_concurrent_trials": k, "scheduler": "none",
                       "sampler": "random", "resources_per_trial": resources, "storage": str(root / "runs")},
        }
    )  # fmt: skip
    started_at, start = time.time(), time.perf_counter()
    result = tunetrain.search(experiment)
    wall = time.perf_counter() - start
    statuses = {t.status for t in result.trials}
    if len(result.trials) != cli.waves * k or statuses != {"completed"}:
        raise RuntimeError(f"K={k}: {len(result.trials)} trials, statuses {statuses}: {result.table(20)}")
    trials = [_trial_timings(Path(result.experiment_dir), t) for t in sorted(result.trials, key=lambda t: t.started_at)]
    runtimes = [t["train_runtime"] for t in trials]
    cold = _in_slots(trials, k, started_at)
    startups = [t["first_step_at"] - t["started_at"] for t in trials]
    per_trial = statistics.mean(t["train_samples"] / t["train_runtime"] for t in trials)
    return {
        "k": k,
        "trials": len(trials),
        "wall_s": wall,
        "per_trial_samples_s": per_trial,
        "aggregate_samples_s": k * per_trial,
        "end_to_end_samples_s": sum(t["train_samples"] for t in trials) / wall,
        "busy_s": statistics.mean(runtimes),
        "setup_s": trials[0]["started_at"] - started_at,
        "startup_cold_s": _mean(s for s, c in zip(startups, cold, strict=True) if c),
        "startup_warm_s": _mean(s for s, c in zip(startups, cold, strict=True) if not c),
        "wind_down_s": _mean(t["ended_at"] - t["first_step_at"] - t["train_runtime"] for t in trials),
        "overhead_cold_s": _mean(t["overhead_s"] for t, c in zip(trials, cold, strict=True) if c),
        "overhead_warm_s": _mean(t["overhead_s"] for t, c in zip(trials, cold, strict=True) if not c),
        "overhead_per_slot_s": (wall * k - sum(runtimes)) / len(trials),
    }


def _in_slots(trials: list[dict], k: int, search_start: float) -> list[bool]:
    """Place the trials (by start) in K slots; set each one's `overhead_s`, its slot's time besides training (from
    the slot's previous trial's end, or the search's start, to its own end, less train_runtime); True where a trial
    was its slot's first (a fresh worker).

    A trial takes the slot freed last before it started: the one whose end let it start.
    """
    slots: list[float | None] = [None] * k
    cold = []
    for trial in trials:
        free = [i for i, end in enumerate(slots) if end is None or end <= trial["started_at"]]
        slot = min(free or range(k), key=lambda i: (slots[i] is not None, -(slots[i] or 0.0)))
        cold.append(slots[slot] is None)
        since = search_start if slots[slot] is None else slots[slot]
        trial["overhead_s"] = trial["ended_at"] - since - trial["train_runtime"]
        slots[slot] = trial["ended_at"]
    return cold


def _mean(values) -> float:
    values = list(values)
    return statistics.mean(values) if values else float("nan")


def _trial_timings(experiment_dir: Path, trial) -> dict:
    """The loop's train_runtime / train_samples and the wall time of its first step, from the trial's events."""
    logdir = experiment_dir / "tensorboard" / trial.trial_id
    files = sorted(logdir.glob("events.out.tfevents.*"))
    hparam_files = sorted(logdir.glob("*/events.out.tfevents.*"))
    if not files or not hparam_files:
        raise RuntimeError(f"trial {trial.trial_id}: no TensorBoard events under {logdir} (is report_to none?)")
    # the first record of an events file is its version stamp, written when the loop opens it (on_train_begin);
    # a trial retried after a failure has several: the last one trained to the end
    first_step_at = next(_events(files[-1])).wall_time
    finals = {value.tag: value.simple_value for event in _events(hparam_files[-1]) for value in event.summary.value}
    return {
        "started_at": trial.started_at,
        "ended_at": trial.ended_at,
        "first_step_at": first_step_at,
        "train_runtime": finals["hparam/train_runtime"],
        "train_samples": finals["hparam/train_samples"],
    }


def _events(path: Path):
    """The Event protos of a TensorBoard events file (TFRecord: length, its CRC, the record, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data = path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event()
        event.ParseFromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        yield event


def _start_ray(cli: argparse.Namespace) -> float:
    import logging

    import ray

    if cli.cpu:
        cpus, gpus = cli.cpus, 0
    else:
        import torch

        if torch.cuda.device_count() < 1:  # counts devices without creating a CUDA context in the driver
            raise SystemExit("no GPU visible to torch: run with --cpu for the CPU stand-in")
        cpus, gpus = max(cli.k) * cli.cpus_per_trial, 1
    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level=logging.ERROR)  # fmt: skip
    return time.perf_counter() - start


def _device_line(cli: argparse.Namespace) -> str:
    import torch

    if cli.cpu:
        return (
            f"CPU STAND-IN (no GPU): K trials share {cli.cpus:g} logical CPUs (cpu = {cli.cpus:g}/K), "
            f"1 torch thread each; {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        )
    name = torch.cuda.get_device_name(0)
    cores = os.cpu_count() or 0
    line = f"GPU: {name}, gpu = 1/K, cpu = {cli.cpus_per_trial:g} per trial; {cores} cores, torch {torch.__version__}"
    if cores < max(cli.k) * cli.cpus_per_trial:
        line += f"  (note: fewer cores than {max(cli.k)} x {cli.cpus_per_trial:g}: the CPU side is oversubscribed)"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU to compare")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (28 steps each at batch 128)")
    parser.add_argument("--waves", type=int, default=3, help="trials per slot: a search runs waves x K trials")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=32, help="the CNN's width (fixed: every trial the same)")
    parser.add_argument("--cpus-per-trial", type=float, default=1, help="GPU mode: resources_per_trial.cpu")
    parser.add_argument("--cpu", action="store_true", help="no GPU: K trials share --cpus logical CPUs instead")
    parser.add_argument("--cpus", type=float, default=2, help="--cpu: the logical CPUs the K trials share")
    cli = parser.parse_args()
    if 1 not in cli.k:
        parser.error("--k must include 1: every K is compared with one trial alone")
    import logging

    import ray

    startup = _start_ray(cli)
    logging.getLogger("tunetrain").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "cpu_task.py").write_text(CPU_TASK)
        for k in sorted(set(cli.k)):
            rows.append(packed_search(root, k, cli))
    ray.shutdown()

    print(_device_line(cli))  # after the searches: naming the GPU creates a CUDA context in this process
    settings = {"epochs": cli.epochs, "batch_size": cli.batch_size, "channels": cli.channels, "waves": cli.waves}
    print(json.dumps({"ray_startup_s": round(startup, 2), **settings}))
    one = rows[0]["aggregate_samples_s"]
    print(
        f"{'K':>2} {'trials':>6} {'busy s':>7} {'trial samples/s':>15} {'aggregate':>10} {'/ (K x K=1)':>11} "
        f"{'end-to-end':>10}"
    )
    for r in rows:
        efficiency = r["aggregate_samples_s"] / (r["k"] * one)
        print(
            f"{r['k']:>2} {r['trials']:>6} {r['busy_s']:>7.2f} {r['per_trial_samples_s']:>15.0f} "
            f"{r['aggregate_samples_s']:>10.0f} {efficiency:>11.2f} {r['end_to_end_samples_s']:>10.0f}"
        )
    print(
        f"\n{'K':>2} {'wall s':>7} {'set-up s':>8} {'start-up cold s':>15} {'warm s':>6} {'wind-down s':>11} "
        f"{'overhead/trial cold s':>21} {'warm s':>6} {'overhead per slot s':>19}"
    )
    for r in rows:
        print(
            f"{r['k']:>2} {r['wall_s']:>7.2f} {r['setup_s']:>8.2f} {r['startup_cold_s']:>15.2f} "
            f"{r['startup_warm_s']:>6.2f} {r['wind_down_s']:>11.2f} {r['overhead_cold_s']:>21.2f} "
            f"{r['overhead_warm_s']:>6.2f} {r['overhead_per_slot_s']:>19.3f}"
        )
    print("targets: aggregate / (K x K=1) >= 0.9 for K <= 4; overhead per trial slot <= 0.5 s")
    if cli.cpu:
        print("(CPU stand-in: these figures are not GPU packing figures; run without --cpu on a GPU machine)")


if __name__ == "__main__":
    main()
