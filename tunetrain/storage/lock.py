"""One driver per experiment: a lock in the experiment dir, held while a search runs.

- On a local or mounted disk: an OS lock (`flock`) on `.tunetrain.lock`, released by the kernel when the holder
  exits, however it exits (a SIGKILL too), so a lock is never left stale. The file also says who holds it.
- On remote storage (s3://...), which has no locks: a lease object naming its holder, rewritten every
  `heartbeat_s` by a thread of the holder; a lease whose heartbeat is older than `stale_after_s`, or whose holder ran
  on this host and is gone, was left by a driver that died, and is taken over. An object store cannot swap an
  object atomically: two drivers that start within the same second can both write a lease; each reads it back and
  the one whose lease is not there gives way.

Readers (`report`, `export`, `tunetrain train EXPERIMENT_DIR`) take no lock: every file is written whole.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError
from tunetrain.storage.files import read_bytes, write_whole
from tunetrain.storage.layout import LOCK_NAME

if TYPE_CHECKING:
    from tunetrain.storage.layout import ExperimentDir


class ExperimentLock:
    """`with ExperimentLock(exp_dir):` holds the experiment for this driver, or raises ConfigError naming the holder.

    An experiment dir the lock had to create, and that holds nothing but the lock when it is released (a search
    refused before it wrote anything), is removed again.
    """

    def __init__(self, exp_dir: ExperimentDir, *, heartbeat_s: float = 15.0, stale_after_s: float = 90.0) -> None:
        self.exp_dir = exp_dir
        self.path = f"{exp_dir.path}/{LOCK_NAME}"
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "id": uuid.uuid4().hex}
        self._file: Any = None  # the open lock file (local)
        self._stop = threading.Event()  # stops the heartbeat (remote)
        self._heartbeat: threading.Thread | None = None
        self._created_dir = False

    def __enter__(self) -> ExperimentLock:
        self._created_dir = not self.exp_dir.exists()
        self.exp_dir.filesystem.create_dir(self.exp_dir.path, recursive=True)
        if self.exp_dir.is_local:
            self._lock_local()
        else:
            self._lock_remote()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # releases the flock
            self._file = None
        if self._heartbeat is not None:
            self._stop.set()
            self._heartbeat.join()
            self._heartbeat = None
            self.exp_dir.filesystem.delete_file(self.path)
        if self._created_dir:
            self._remove_if_only_the_lock()

    # --- a local or mounted disk
    def _lock_local(self) -> None:
        import fcntl

        file = open(self.path, "a+")  # noqa: SIM115 (held open for as long as the lock is)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = _parse(file.read())
            file.close()
            raise ConfigError(self._held_by(holder)) from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps(self.holder))
        file.flush()
        self._file = file

    # --- remote storage: a lease
    def _lock_remote(self) -> None:
        lease = self._read_lease()
        if lease is not None and not self._stale(lease):
            raise ConfigError(self._held_by(lease))
        self._write_lease()
        time.sleep(min(1.0, self.heartbeat_s / 10))  # a rival that wrote at the same time has written by now
        lease = self._read_lease()
        if lease is None or lease.get("id") != self.holder["id"]:
            raise ConfigError(self._held_by(lease))
        self._heartbeat = threading.Thread(target=self._beat, name="tunetrain-lease", daemon=True)
        self._heartbeat.start()

    def _stale(self, lease: dict[str, Any]) -> bool:
        """Left by a driver that is gone: its heartbeat is old, or it ran on this host and its process is not there."""
        if time.time() - lease.get("heartbeat_at", 0) >= self.stale_after_s:
            return True
        if lease.get("host") != self.holder["host"] or not isinstance(lease.get("pid"), int):
            return False
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return True  # killed (SIGKILL leaves its lease behind): no need to wait for the heartbeat to age
        except PermissionError:
            return False  # alive, another user's
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write_lease()
            except OSError:  # storage unreachable for a moment: the next beat tries again
                continue

    def _read_lease(self) -> dict[str, Any] | None:
        try:
            return _parse(read_bytes(self.exp_dir.filesystem, self.path).decode(errors="replace"))
        except (OSError, FileNotFoundError):
            return None

    def _write_lease(self) -> None:
        lease = {**self.holder, "heartbeat_at": time.time()}
        write_whole(self.exp_dir.filesystem, self.path, json.dumps(lease).encode())

    # --- helpers
    def _held_by(self, holder: dict[str, Any] | None) -> str:
        who = "another driver"
        if holder:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
            who = f"another driver (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since})"
        return (
            f"experiment {self.exp_dir.uri} is being searched by {who}: one driver per experiment; wait for it to "
            "finish (report and export work meanwhile), or stop it and run this command again to resume"
        )

    def _remove_if_only_the_lock(self) -> None:
        from pyarrow import fs

        try:
            entries = self.exp_dir.filesystem.get_file_info(fs.FileSelector(self.exp_dir.path))
            if all(info.base_name == LOCK_NAME for info in entries):
                self.exp_dir.filesystem.delete_dir(self.exp_dir.path)
        except OSError:
            pass  # another driver is in it now, or it is gone already


def _parse(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
