"""`tunetrain search` end to end through the real CLI: a driver killed with SIGKILL resumes on rerun; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TESTS

from tunetrain.results import read_results

SLOW_TASK = '''
import hashlib, json, os, sys, time
sys.path.insert(0, {tests!r})
import torch
import tiny_task

class Slow(torch.nn.Module):
    """The tiny model, slowed to ~80 ms a training step; logs how many steps each instance trained."""
    def __init__(self, params):
        super().__init__()
        self.inner = tiny_task.model_init({{"hidden": params.get("hidden", 8), "dropout": 0.0}})
        self.log = os.path.join({logs!r}, "hidden-%s.log" % params.get("hidden"))
        self.name = "%s-%s" % (os.getpid(), id(self))
        self.steps = 0
    def forward(self, x):
        if self.training:
            self.steps += 1
            time.sleep(0.08)
            with open(self.log, "a") as log:
                log.write(f"{{self.name}} {{self.steps}}\\n")
        return self.inner(x)

def task():
    t = tiny_task.task()
    t.model_init = Slow
    return t
'''


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return {**env, **extra}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunetrain.cli", *args]


def _write_experiment(tmp_path: Path, task: str, **search) -> Path:
    hidden = list(range(4, 4 + 2 * search.pop("num_trials", 6), 2))
    experiment = {
        "name": "killed",
        "task": task,
        "train": {"num_train_epochs": 4, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
                  "logging_strategy": "no", "metric_for_best_model": "accuracy", "report_to": "none"},
        "space": {"hidden": {"type": "categorical", "choices": hidden}},
        "search": {"backend": "ray", "num_trials": len(hidden), "max_concurrent_trials": 2, "sampler": "grid",
                   "scheduler": "none", "storage": str(tmp_path / "runs"), **search},
    }  # fmt: skip
    path = tmp_path / "killed.yaml"
    path.write_text(json.dumps(experiment))  # JSON is YAML
    return path


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening_addresses(pid: int) -> set[str]:
    """The addresses the process and its descendants listen on."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a worker that just exited
            continue
    return found


def _slow_search(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(the dir of the trials' step logs, the experiment file, its experiment dir) of a search of SLOW_TASK."""
    logs = tmp_path / "logs"
    logs.mkdir()
    task_file = tmp_path / "slow_task.py"
    task_file.write_text(SLOW_TASK.format(tests=str(TESTS), logs=str(logs)))
    return logs, _write_experiment(tmp_path, f"{task_file}:task"), tmp_path / "runs" / "killed"


def _trained_steps(log: Path) -> list[int]:
    """Steps each model instance of one trial trained, in the order the instances started."""
    last: dict[str, int] = {}
    for line in log.read_text().splitlines():
        name, step = line.split()
        last[name] = int(step)
    return list(last.values())


@pytest.mark.parametrize(
    "ray_env",
    [
        {},
        # Ray's own periodic snapshots off: its saved state is then the one from each trial's first and last
        # report (the token checkpoints), older than the trials that ended or evaluated since
        {"TUNE_GLOBAL_CHECKPOINT_S": "100000"},
    ],
    ids=["default", "no-periodic-snapshots"],
)
def test_sigkilled_search_resumes_without_rerunning_completed_trials(tmp_path, ray_env):
    logs, experiment, exp_dir = _slow_search(tmp_path)

    driver = subprocess.Popen(
        _cli("search", str(experiment)), env=_env(**ray_env), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 150
    done_before: dict[str, float] = {}
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            results = read_results(exp_dir, missing_ok=True) if (exp_dir / "results.parquet").exists() else None
            finished = [t for t in (results.trials if results else []) if t.status == "completed"]
            running = [t for t in (results.trials if results else []) if t.status == "running" and t.evaluations]
            if len(finished) >= 2 and running:
                done_before = {t.trial_id: t.ended_at for t in finished}
                break
        assert done_before, "the search did not get far enough to be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()

    rerun = subprocess.run(
        _cli("search", str(experiment)), env=_env(**ray_env), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming experiment 'killed'" in rerun.stderr
    results = read_results(exp_dir)
    assert len(results.trials) == 6
    assert {t.status for t in results.trials} == {"completed"}
    after = {t.trial_id: t.ended_at for t in results.trials}
    assert all(after[trial_id] == ended for trial_id, ended in done_before.items())  # not rerun

    # every completed trial trained its 60 steps once; an interrupted one resumed from a checkpoint (a multiple
    # of the 15 steps an epoch), not from step 0
    resumed = []
    for trial in results.trials:
        runs = _trained_steps(logs / f"hidden-{trial.params['hidden']}.log")
        if trial.trial_id in done_before or len(runs) == 1:
            assert runs == [60]
        else:
            resumed.append(runs[-1])
    assert resumed, "no trial was interrupted"
    assert any(0 < steps < 60 and (60 - steps) % 15 == 0 for steps in resumed), resumed
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--address", "127.0.0.1:1"], "`search.address` is '127.0.0.1:1', but nothing answers at 127.0.0.1:1"),
        (["--address", "auto"], "`search.address` is 'auto', but no running Ray cluster was found"),
        (["--storage", "nosuchfs://bucket/x"], "`search.storage` is 'nosuchfs://bucket/x', but pyarrow cannot open"),
        (["--num-trials", "0"], "`search.num_trials` is 0, but must be >= 1"),
        (["--set", "search.sampler=grid", "--set", "space.hidden={type: int, low: 1, high: 9}", "--backend", "ray"],
         None),
    ],
)  # fmt: skip
def test_bad_search_input_is_one_line_and_exit_2(tmp_path, flags, message):
    experiment = _write_experiment(tmp_path, f"{TESTS / 'tiny_task.py'}:task")
    if message is None:  # a grid over an int is fine: it is finite. A grid over a float is not:
        flags = ["--set", "search.sampler=grid", "--set", "space.hidden={type: float, low: 1, high: 9}"]
        message = "`search.sampler` is 'grid', which cannot search this space"
    result = subprocess.run(
        _cli("search", str(experiment), *flags), env=_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "killed" / "results.parquet").exists()


def test_ctrl_c_stops_the_search_says_how_to_resume_and_resuming_finishes_it(tmp_path):
    _, experiment, exp_dir = _slow_search(tmp_path)

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group (the driver and the Ray it started)
    driver = subprocess.Popen(
        _cli("search", str(experiment)), env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 150
    done_before: dict[str, float] = {}
    try:
        while time.monotonic() < deadline and not done_before:
            time.sleep(0.5)
            results = read_results(exp_dir, missing_ok=True) if (exp_dir / "results.parquet").exists() else None
            finished = [t for t in (results.trials if results else []) if t.status == "completed"]
            running = [t for t in (results.trials if results else []) if t.status == "running" and t.evaluations]
            if finished and running:
                done_before = {t.trial_id: t.ended_at for t in finished}
        assert done_before, "the search did not get far enough to be interrupted"
        # the Ray it started listens on loopback only (Ray would otherwise advertise the machine's address)
        listening = _listening_addresses(driver.pid)
        assert listening and listening <= LOOPBACK, listening
        os.killpg(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "tunetrain: search interrupted; run the same command again to resume it"
    assert "Traceback" not in stderr
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "running"

    rerun = subprocess.run(_cli("search", str(experiment)), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = read_results(exp_dir)
    assert len(results.trials) == 6 and {t.status for t in results.trials} == {"completed"}
    ended_at = {t.trial_id: t.ended_at for t in results.trials}
    assert all(ended_at[trial_id] == ended for trial_id, ended in done_before.items())  # not rerun
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"
