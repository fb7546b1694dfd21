"""Faults a single run meets: a disk that fills up while checkpointing. The run stops with one line, leaves only
complete checkpoints, and `--resume` continues once there is space again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tunetrain import checkpoint as ckpt
from tunetrain.cli import main


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 300 KiB tmpfs (room for one MNIST-1D MLP checkpoint, not two); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


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
