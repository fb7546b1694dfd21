"""A disk that fills up: a single run stops with one line, leaves only complete checkpoints, and `--resume` continues
once there is space again; a search stops with one line, and running it again resumes it once there is space."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TESTS

from tunetrain import checkpoint as ckpt
from tunetrain.cli import main
from tunetrain.results import read_results

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


@contextlib.contextmanager
def _tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `mount`; skips the test where mounting is not allowed."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 300 KiB tmpfs (room for one MNIST-1D MLP checkpoint, not two); skipped where mounting is not allowed."""
    with _tmpfs(tmp_path / "disk", "300k") as mount:
        yield mount


def test_a_full_disk_stops_the_run_in_one_line_and_resume_continues_once_there_is_space(small_disk, tmp_path, capsys):
    experiment = tmp_path / "x.yaml"
    experiment.write_text(
        json.dumps(
            {
                "name": "full",
                "task": "tunetrain.tasks.mnist1d:mlp",
                "train": {"num_train_epochs": 3, "per_device_train_batch_size": 64, "eval_strategy": "epoch",
                          "save_strategy": "epoch", "logging_strategy": "no", "report_to": "none",
                          "output_dir": str(small_disk / "run")},
                "params": {"hidden_size": 100},
            }
        )
    )  # fmt: skip
    assert main(["train", str(experiment)]) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tunetrain:")]
    assert line == (
        f"tunetrain: error: cannot write '{small_disk / 'run' / 'checkpoint-110'}': no space left on the device; the "
        "latest complete checkpoint is checkpoint-55, and the run resumes from it once the storage works again"
    )
    assert sorted(p.name for p in (small_disk / "run").iterdir()) == ["checkpoint-55"]  # no partial copy left

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    assert main(["train", str(experiment), "--resume"]) == 0
    assert [p.name for p in ckpt.list_checkpoints(small_disk / "run")] == ["checkpoint-55", "checkpoint-110",
                                                                            "checkpoint-165"]  # fmt: skip
    metrics = json.loads((small_disk / "run" / "metrics.json").read_text())
    assert metrics["train_samples"] == 2 * 3500  # epochs 2 and 3: resumed, not restarted


SLOW_SAVE_TASK = '''
import sys, time
sys.path.insert(0, {tests!r})
import torch
import tiny_task

class SlowToSave(torch.nn.Sequential):
    """The tiny model, whose weights take 0.15 s to collect: a kill often lands in the middle of a save."""
    def state_dict(self, *args, **kwargs):
        time.sleep(0.15)
        return super().state_dict(*args, **kwargs)

def model_init(params):
    return SlowToSave(*tiny_task.model_init(params))

def task():
    t = tiny_task.task()
    t.model_init = model_init
    return t
'''


def test_a_run_killed_again_and_again_resumes_to_the_same_weights_as_one_left_alone(tmp_path):
    import os
    import random
    import signal
    import sys
    import time

    from conftest import ROOT, TESTS
    from safetensors.torch import load_file

    (tmp_path / "slow_task.py").write_text(SLOW_SAVE_TASK.format(tests=str(TESTS)))

    def experiment(out: str) -> Path:
        path = tmp_path / f"{out}.yaml"
        path.write_text(json.dumps({
            "name": out, "task": f"{tmp_path / 'slow_task.py'}:task",
            "train": {"num_train_epochs": 16, "per_device_train_batch_size": 16, "eval_strategy": "steps",
                      "eval_steps": 5, "save_steps": 5, "logging_steps": 5, "save_total_limit": 2,
                      "metric_for_best_model": "accuracy", "output_dir": str(tmp_path / out), "report_to": "none"},
            "params": {"hidden": 16, "dropout": 0.1},
        }))  # fmt: skip
        return path

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "tunetrain.cli", "train"]
    assert subprocess.run([*cli, str(experiment("alone"))], env=env, capture_output=True).returncode == 0

    killed = experiment("killed")
    out = tmp_path / "killed"
    rng = random.Random(0)
    landed = []  # where each kill landed: "mid-save" (its partial copy left behind) or "between saves"
    for attempt in range(6):
        before = set(ckpt.list_checkpoints(out))
        resume = ["--resume"] if before else []  # nothing to resume from before the first complete checkpoint
        process = subprocess.Popen([*cli, str(killed), *resume], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        partial = f".tmp-checkpoint-*-{process.pid}"  # a save of this process in progress (0.15 s at least)

        def happened(attempt: int = attempt, partial: str = partial, before: set = before) -> bool:
            if attempt % 2 == 0:  # as soon as it writes a checkpoint
                return any(out.glob(partial))
            return bool(set(ckpt.list_checkpoints(out)) - before)  # at a random point after it wrote one whole

        deadline = time.monotonic() + 120
        while process.poll() is None and not happened() and time.monotonic() < deadline:
            time.sleep(0.005)
        if process.poll() is not None:
            break
        if attempt % 2:
            time.sleep(rng.uniform(0, 0.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        landed.append("mid-save" if any(out.glob(partial)) else "between saves")
        # whatever the kill interrupted, only complete checkpoints carry a checkpoint's name
        for path in out.glob("checkpoint-*"):
            assert (path / ckpt.TRAINER_STATE_NAME).is_file() and (path / ckpt.WEIGHTS_NAME).is_file()
    finish = subprocess.run([*cli, str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert len(landed) >= 4, f"the runs ended before they could be killed: {landed}"
    assert landed.count("mid-save") >= 2, landed
    alone = load_file(tmp_path / "alone" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "model.safetensors")
    assert alone.keys() == resumed.keys() and all(torch.equal(alone[k], resumed[k]) for k in alone)


def test_a_full_disk_stops_a_search_in_one_line_and_running_it_again_resumes_it_once_there_is_space(tmp_path):
    from slow_search import cli, env, write_experiment

    with _tmpfs(tmp_path / "disk", "120k") as disk:  # fills up a few trials into the search
        experiment = write_experiment(tmp_path, f"{TESTS / 'tiny_task.py'}:task", storage=str(disk))
        full = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
        assert full.returncode == 1, full.stderr[-3000:]
        assert full.stderr.splitlines()[-1] == (
            f"tunetrain: error: the search stopped: cannot write to {disk / 'killed'}: no space left on device; what "
            "was written is kept: make room (or fix the storage), then run the same command again to resume it"
        )

        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        again = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "resuming experiment 'killed'" in again.stderr
        results = read_results(disk / "killed")
        done = [t for t in results.trials if t.status == "completed"]
        assert sorted(t.params["hidden"] for t in done) == list(range(4, 16, 2))
        assert all(t.evaluations == 4 for t in done)
        assert json.loads((disk / "killed" / "search.json").read_text())["status"] == "finished"
