"""`tunetrain.storage.lock`: one driver per experiment, on a local disk (flock) and on remote storage (a lease)."""

from __future__ import annotations

import json
import time

import pytest
from pyarrow import fs

from tunetrain.errors import ConfigError
from tunetrain.storage import ExperimentDir, ExperimentLock, exists, write_whole
from tunetrain.storage.layout import LOCK_NAME


def _remote(tmp_path) -> ExperimentDir:
    (tmp_path / "bucket").mkdir(exist_ok=True)
    bucket = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())  # not local: the lease path
    return ExperimentDir(bucket, "runs/exp", "s3://runs/exp")


def test_a_second_driver_is_refused_naming_the_holder(tmp_path):
    exp_dir = ExperimentDir.open(str(tmp_path), "exp")
    with ExperimentLock(exp_dir) as held:
        with (
            pytest.raises(ConfigError, match=rf"is being searched by another driver \(pid {held.holder['pid']} on "),
            ExperimentLock(ExperimentDir.open(str(tmp_path), "exp")),
        ):
            pass
        exp_dir.write_state({"status": "running"})
    with ExperimentLock(exp_dir):  # released: the next driver takes it
        assert exp_dir.read_state() == {"status": "running"}


def test_a_dir_the_lock_created_goes_again_when_nothing_was_written(tmp_path):
    exp_dir = ExperimentDir.open(str(tmp_path), "exp")
    with ExperimentLock(exp_dir):
        assert (tmp_path / "exp" / LOCK_NAME).is_file()
    assert not (tmp_path / "exp").exists()  # a search refused before it wrote anything leaves nothing behind
    (tmp_path / "kept").mkdir()
    with ExperimentLock(ExperimentDir.open(str(tmp_path), "kept")):
        pass
    assert (tmp_path / "kept").is_dir()  # not the lock's to remove


def test_restart_removes_everything_but_the_lock_it_holds(tmp_path):
    exp_dir = ExperimentDir.open(str(tmp_path), "exp")
    with ExperimentLock(exp_dir):
        exp_dir.write_state({"status": "running"})
        write_whole(exp_dir.filesystem, f"{exp_dir.trial_path('t1')}/x", b"x")
        exp_dir.remove()
        assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [LOCK_NAME]
        with (
            pytest.raises(ConfigError, match="is being searched by another driver"),
            ExperimentLock(ExperimentDir.open(str(tmp_path), "exp")),
        ):
            pass


def test_a_lease_on_remote_storage_is_refused_while_fresh_and_taken_over_when_stale(tmp_path):
    exp_dir = _remote(tmp_path)
    lease = f"{exp_dir.path}/{LOCK_NAME}"
    fresh = {"host": "elsewhere", "pid": 7, "since": time.time(), "id": "x", "heartbeat_at": time.time()}
    write_whole(exp_dir.filesystem, lease, json.dumps(fresh).encode())
    with (
        pytest.raises(ConfigError, match=r"another driver \(pid 7 on elsewhere"),
        ExperimentLock(exp_dir, heartbeat_s=0.05),
    ):
        pass
    stale = {**fresh, "heartbeat_at": time.time() - 3600}  # its driver died an hour ago
    write_whole(exp_dir.filesystem, lease, json.dumps(stale).encode())
    with ExperimentLock(exp_dir, heartbeat_s=0.05, stale_after_s=1) as held:
        first = json.loads(exp_dir.filesystem.open_input_stream(lease).read())
        assert first["id"] == held.holder["id"]
        time.sleep(0.3)
        beat = json.loads(exp_dir.filesystem.open_input_stream(lease).read())
        assert beat["heartbeat_at"] > first["heartbeat_at"]  # the holder keeps it fresh
        with (
            pytest.raises(ConfigError, match="is being searched by another driver"),
            ExperimentLock(_remote(tmp_path), heartbeat_s=0.05),
        ):
            pass
    assert not exists(exp_dir.filesystem, lease)  # released


def test_a_lease_left_by_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path):
    import socket
    import subprocess
    import sys

    exp_dir = _remote(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)  # a process that has exited
    lease = {
        "host": socket.gethostname(),
        "pid": dead_pid,
        "since": time.time(),
        "id": "x",
        "heartbeat_at": time.time(),
    }
    write_whole(exp_dir.filesystem, f"{exp_dir.path}/{LOCK_NAME}", json.dumps(lease).encode())
    with ExperimentLock(exp_dir, heartbeat_s=0.05) as held:
        assert held.holder["pid"] != dead_pid
