"""A search of a slowed tiny task through the real CLI, for the tests that kill it, interrupt it or move it.

Each trial trains 60 steps (4 epochs of 15, a checkpoint at each epoch) at ~80 ms a step, and every model
instance logs which host trained how many steps, so a test can tell whether a trial was rerun, or resumed from a
checkpoint (and where).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from conftest import ROOT, TESTS

from tunetrain.results import read_results

STEPS = 60  # a trial's whole run
EPOCH = 15  # steps between checkpoints

SLOW_TASK = '''
import os, sys, time, warnings
sys.path.insert(0, {tests!r})
import ray, torch
from ray import tune
import tiny_task

class Slow(torch.nn.Module):
    """The tiny model, slowed to ~80 ms a training step (and `save_delay` s a checkpoint); logs which host trained
    how many steps of this instance, in a log of its trial."""
    def __init__(self, params):
        super().__init__()
        self.inner = tiny_task.model_init({{"hidden": params.get("hidden", 8), "dropout": 0.0}})
        with warnings.catch_warnings():  # built outside a trial (loading an export): no trial id, and a warning
            warnings.simplefilter("ignore")
            trial = tune.get_context().get_trial_id()
        self.log = os.path.join({logs!r}, "trial-%s.log" % trial)
        self.name = "%s-%s" % (os.getpid(), id(self))
        self.node = ray.util.get_node_ip_address()
        self.steps = 0
    def forward(self, x):
        if self.training:
            self.steps += 1
            time.sleep(0.08)
            with open(self.log, "a") as log:
                log.write(f"{{self.name}} {{self.node}} {{self.steps}}\\n")
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


def runs_of(logs: Path, trial_id: str) -> list[tuple[str, int]]:
    """(host, steps trained) of each model instance of a trial, in the order they started."""
    log = logs / f"trial-{trial_id}.log"
    last: dict[str, tuple[str, int]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            name, node, step = line.split()
            last[name] = (node, int(step))
    return list(last.values())


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


def check_resumed(logs: Path, results: Any, done_before: dict[str, float]) -> None:
    """Every completed trial trained its 60 steps once; one the kill interrupted resumed from a checkpoint (a
    multiple of the 15 steps an epoch), not from step 0; trials that had ended were not run again."""
    ended_at = {t.trial_id: t.ended_at for t in results.trials}
    assert all(ended_at[trial_id] == ended for trial_id, ended in done_before.items())
    resumed = []
    for trial in results.trials:
        steps = [steps for _, steps in runs_of(logs, trial.trial_id)]
        if trial.trial_id in done_before or len(steps) == 1:
            assert steps == [STEPS], (trial.trial_id, steps)
        else:
            resumed.append(steps[-1])
    assert resumed, "no trial was interrupted"
    assert any(0 < steps < STEPS and (STEPS - steps) % EPOCH == 0 for steps in resumed), resumed


def resume_points(steps_of_runs: list[int]) -> set[int]:
    """The steps a trial's last run may have resumed from, given the steps each of its runs trained: a run killed
    after step `end` resumes from the last checkpoint at or before it, or the one before that when the kill landed
    while that checkpoint was being written (its evaluation and save come right after step `end`)."""
    starts = {0}
    for steps in steps_of_runs[:-1]:
        after = set()
        for start in starts:
            end = start + steps
            last = end // EPOCH * EPOCH
            after.add(last)
            if end == last and last >= EPOCH:
                after.add(last - EPOCH)
        starts = after
    return starts
