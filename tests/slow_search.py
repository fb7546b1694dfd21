"""A search of a slowed tiny task through the real CLI, for the tests that kill it, interrupt it or move it.

Each trial trains 60 steps (4 epochs of 15, a checkpoint at each epoch) at ~80 ms a step, and every model
instance logs which host trained it from which step how many steps (the model counts its steps in a buffer that
its checkpoints save), so a test can tell whether a trial was rerun, or resumed from a checkpoint (and which).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conftest import ROOT, TESTS

from tunetrain import checkpoint as ckpt
from tunetrain.results import read_results

STEPS = 60  # a trial's whole run
EPOCH = 15  # steps between checkpoints

SLOW_TASK = '''
import os, sys, time, uuid, warnings
sys.path.insert(0, {tests!r})
import ray, torch
from ray import tune
import tiny_task

class Slow(torch.nn.Module):
    """The tiny model, slowed to ~80 ms a training step (and `save_delay` s a checkpoint); logs which host trained
    this instance from which step how many steps, in a log of its trial."""
    def __init__(self, params):
        super().__init__()
        self.inner = tiny_task.model_init({{"hidden": params.get("hidden", 8), "dropout": 0.0}})
        # the steps trained over every run of the trial: a checkpoint saves it, a resumed run loads it
        self.register_buffer("trained", torch.zeros((), dtype=torch.long))
        with warnings.catch_warnings():  # built outside a trial (loading an export): no trial id, and a warning
            warnings.simplefilter("ignore")
            trial = tune.get_context().get_trial_id()
        self.log = os.path.join({logs!r}, "trial-%s.log" % trial)
        self.name = "%s-%s" % (os.getpid(), uuid.uuid4().hex[:12])
        self.node = ray.util.get_node_ip_address()
        self.start = None
        self.steps = 0
    def forward(self, x):
        if self.training:
            if self.start is None:  # the step of the checkpoint this run resumed from (0: none)
                self.start = int(self.trained)
            self.trained += 1
            self.steps += 1
            time.sleep(0.08)
            with open(self.log, "a") as log:
                log.write(f"{{self.name}} {{self.node}} {{self.start}} {{self.steps}}\\n")
        return self.inner(x)
    def state_dict(self, *args, **kwargs):
        time.sleep({save_delay})  # a kill often lands in the middle of writing a checkpoint
        return super().state_dict(*args, **kwargs)

def task():
    t = tiny_task.task()
    t.model_init = Slow
    return t
'''


def env(**extra: str) -> dict[str, str]:
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return {**base, **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunetrain.cli", *args]


def start_search(experiment: Path, **ray_env: str) -> subprocess.Popen:
    """`tunetrain search EXPERIMENT` in a session of its own (so that `kill_search` reaches its local Ray), silent."""
    return subprocess.Popen(
        cli("search", str(experiment)), env=env(**ray_env), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def write_experiment(tmp_path: Path, task: str, **search: Any) -> Path:
    """An experiment file `killed.yaml` searching `hidden` over a grid (one trial each), 2 trials at a time."""
    hidden = list(range(4, 4 + 2 * search.pop("num_trials", 6), 2))
    experiment = {
        "name": "killed",
        "task": task,
        "train": {"num_train_epochs": STEPS // EPOCH, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
                  "logging_strategy": "no", "metric_for_best_model": "accuracy", "report_to": "none"},
        "space": {"hidden": {"type": "categorical", "choices": hidden}},
        "search": {"backend": "ray", "num_trials": len(hidden), "max_concurrent_trials": 2, "sampler": "grid",
                   "scheduler": "none", "storage": str(tmp_path / "runs"), **search},
    }  # fmt: skip
    path = tmp_path / "killed.yaml"
    path.write_text(json.dumps(experiment))  # JSON is YAML
    return path


def slow_search(tmp_path: Path, *, save_delay: float = 0.0, **search: Any) -> tuple[Path, Path]:
    """(the dir of the trials' step logs, the experiment file) of a search of SLOW_TASK."""
    logs = tmp_path / "logs"
    logs.mkdir()
    task_file = tmp_path / "slow_task.py"
    task_file.write_text(SLOW_TASK.format(tests=str(TESTS), logs=str(logs), save_delay=save_delay))
    return logs, write_experiment(tmp_path, f"{task_file}:task", **search)


def _instances(logs: Path, trial_id: str) -> list[tuple[str, int, int]]:
    """(host, step it started from, steps trained) of each model instance of a trial, in the order they started."""
    log = logs / f"trial-{trial_id}.log"
    last: dict[str, tuple[str, int, int]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            name, node, start, steps = line.split()
            last[name] = (node, int(start), int(steps))
    return list(last.values())


def runs_of(logs: Path, trial_id: str) -> list[tuple[str, int]]:
    """(host, steps trained) of each model instance of a trial, in the order they started."""
    return [(node, steps) for node, _, steps in _instances(logs, trial_id)]


def spans_of(logs: Path, trial_id: str) -> list[tuple[int, int]]:
    """(first step, last step) of each run of a trial (a model instance that trained), in the order they started."""
    return [(start, start + steps) for _, start, steps in _instances(logs, trial_id)]


def checkpoints_left(exp_dir: Path, logs: Path) -> dict[str, tuple[int, int]]:
    """While no search runs on a local experiment dir: {trial id: (its runs so far, the step of the latest complete
    checkpoint in its dir, 0 for none)}. Its next run must start at that step."""
    trial_ids = {log.stem[len("trial-") :] for log in logs.glob("trial-*.log")}
    trial_ids |= {path.name for path in (exp_dir / "trials").glob("*") if path.is_dir()}
    left = {}
    for trial_id in trial_ids:
        latest = ckpt.find_latest(exp_dir / "trials" / trial_id)
        left[trial_id] = (len(spans_of(logs, trial_id)), ckpt.checkpoint_step(latest) if latest else 0)
    return left


def check_runs(
    logs: Path, trial_id: str, *, left: Sequence[tuple[int, int]] = (), completed: bool = True
) -> list[tuple[int, int]]:
    """Each run of the trial started at the latest complete checkpoint the run before it left, and the first at
    step 0; returns the runs' (first step, last step).

    A run that trained past a checkpoint's step had written it whole (the save comes before the next step). One
    killed right at a checkpoint's step may have died writing it: the next run starts there or at the checkpoint
    before; `left` (what `checkpoints_left` saw at each kill: runs so far, latest step) settles which, exactly."""
    spans = spans_of(logs, trial_id)
    where = (trial_id, spans)
    assert spans and spans[0][0] == 0, where
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        last = end // EPOCH * EPOCH
        possible = {last, last - EPOCH} if end == last >= EPOCH else {last}
        assert start < end and next_start in possible, where
    for runs_before, latest in left:
        if runs_before < len(spans):  # the trial ran again after that kill
            assert spans[runs_before][0] == latest, (where, left)
    if completed:
        assert spans[-1][1] == STEPS, where
    return spans


def kill_search(driver: Any, sig: int = signal.SIGKILL) -> None:
    """Send `sig` at once to the driver's process group (the driver and the local Ray it started) and to every
    process it started: Ray's trial workers are outside the group, and a kill of the driver alone leaves them
    training, finishing a checkpoint meanwhile (seen here). Then wait until every one of them has exited: only then
    is what the search left on disk final. Any still there after a minute are killed."""
    import psutil

    try:
        started = psutil.Process(driver.pid).children(recursive=True)
    except psutil.Error:  # the driver already ended
        started = []
    os.killpg(driver.pid, sig)
    for process in started:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)
    driver.wait()
    _, alive = psutil.wait_procs(started, timeout=60)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


def wait_for(condition: Any, driver: Any, timeout: float = 150) -> bool:
    """Poll `condition()` every 10 ms until it holds (True), the driver ends or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False


def saving(exp_dir: Path) -> list[Path]:
    """The checkpoints some trial of the experiment is writing now (or was, when it was killed)."""
    return list(exp_dir.glob("trials/*/.tmp-checkpoint-*"))


def complete_checkpoints(exp_dir: Path) -> set[Path]:
    """Every trial's complete checkpoints now."""
    return {path for trial in exp_dir.glob("trials/*") for path in ckpt.list_checkpoints(trial)}


def wait_until_partway(exp_path: str, driver: Any, *, finished: int, filesystem: Any = None) -> dict[str, float]:
    """Poll results.parquet until `finished` trials completed while another has evaluated but not ended; returns
    {trial id: ended_at} of the completed ones (empty if the search never got there)."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.5)
        try:
            results = read_results(exp_path, filesystem=filesystem, missing_ok=True)
        except Exception:  # written as we read it (remote storage has no atomic rename)
            continue
        if results is None:  # not written yet
            continue
        done = [t for t in results.trials if t.status == "completed"]
        partway = [t for t in results.trials if t.status == "running" and t.evaluations]
        if len(done) >= finished and partway:
            return {t.trial_id: t.ended_at for t in done}
    return {}


def check_resumed(
    logs: Path, results: Any, done_before: dict[str, float], left: dict[str, tuple[int, int]] | None = None
) -> None:
    """Every completed trial trained its 60 steps once; every one the kill interrupted resumed from its own latest
    complete checkpoint (`check_runs`; exactly the one its dir held, given `left` from `checkpoints_left` after the
    kill), and at least one from a checkpoint, not from step 0; trials that had ended were not run again."""
    ended_at = {t.trial_id: t.ended_at for t in results.trials}
    assert all(ended_at[trial_id] == ended for trial_id, ended in done_before.items())
    resumed = []
    for trial in results.trials:
        kill = [left[trial.trial_id]] if left and trial.trial_id in left else []
        spans = check_runs(logs, trial.trial_id, left=kill)
        if trial.trial_id in done_before:
            assert spans == [(0, STEPS)], (trial.trial_id, spans)
        elif len(spans) > 1:
            resumed.append(spans)
    assert resumed, "no trial was interrupted"
    assert any(spans[-1][0] > 0 for spans in resumed), resumed
