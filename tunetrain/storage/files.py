"""Files of an experiment written whole and read back, on a local disk or any pyarrow filesystem.

One rule for every writer: a reader (or a run resumed after a kill) never sees half a file. On a local disk a file
is written under a temporary name in the same directory and renamed into place (atomic on POSIX); an object store
replaces an object whole by itself. A directory cannot be renamed into place on an object store: it is uploaded
file by file with its marker file (the one whose presence says the directory is complete) last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError
from tunetrain.storage.location import is_local

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem


def _kind(filesystem: FileSystem, path: str) -> Any:
    return filesystem.get_file_info(path).type


def exists(filesystem: FileSystem, path: str) -> bool:
    from pyarrow import fs

    return _kind(filesystem, path) != fs.FileType.NotFound


def is_file(filesystem: FileSystem, path: str) -> bool:
    from pyarrow import fs

    return _kind(filesystem, path) == fs.FileType.File


def is_dir(filesystem: FileSystem, path: str) -> bool:
    from pyarrow import fs

    return _kind(filesystem, path) == fs.FileType.Directory


def read_bytes(filesystem: FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def write_whole(filesystem: FileSystem, path: str, data: bytes) -> None:
    """Write `data` to `path` whole (see the module docstring), creating its directory."""
    _atomic(filesystem, path, lambda stream: stream.write(data))


def write_local_file(path: str | Path, data: bytes) -> None:
    """`write_whole` for a file on this machine's disk."""
    from pyarrow.fs import LocalFileSystem

    write_whole(LocalFileSystem(), str(Path(path).resolve()), data)


def read_json(filesystem: FileSystem, path: str) -> Any:
    """The JSON file at `path`, or None where there is none; a ConfigError naming it where it is damaged."""
    if not exists(filesystem, path):
        return None
    try:
        return json.loads(read_bytes(filesystem, path).decode())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigError(damaged_message(path, exc)) from None


def write_json(filesystem: FileSystem, path: str, value: Any) -> None:
    """`value` as indented JSON, written whole."""
    write_whole(filesystem, path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def read_parquet(filesystem: FileSystem, path: str) -> Any:
    """The parquet table at `path` (a `pyarrow.Table`), or None where there is none; a ConfigError naming it where
    it is damaged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not exists(filesystem, path):
        return None
    try:
        return pq.read_table(path, filesystem=filesystem)
    except (pa.ArrowInvalid, OSError) as exc:  # garbage between parquet's magic bytes is an OSError ("thrift")
        raise ConfigError(damaged_message(path, exc)) from None


def damaged_message(path: str, reason: BaseException | str) -> str:
    """The one line that says a file of an experiment is damaged, and what to do about it."""
    text = str(reason).strip()
    first = text.splitlines()[0] if text else type(reason).__name__
    return f"{path!r} is damaged ({first}): restore it from a backup, or delete it (what it held is lost)"


def write_parquet(filesystem: FileSystem, path: str, table: Any) -> None:
    """A `pyarrow.Table` as a parquet file, written whole."""
    import pyarrow.parquet as pq

    _atomic(filesystem, path, lambda stream: pq.write_table(table, stream))


def upload_dir(local_dir: str | Path, filesystem: FileSystem, remote: str, *, marker: str) -> None:
    """Copy a local directory's files to `remote` on `filesystem`, the file named `marker` last: a reader that finds
    the marker finds every other file."""
    from pyarrow import fs

    filesystem.create_dir(remote, recursive=True)
    for file in sorted(Path(local_dir).iterdir(), key=lambda p: p.name == marker):
        fs.copy_files(str(file), f"{remote}/{file.name}", destination_filesystem=filesystem)


def copy_down(filesystem: FileSystem, remote: str, local: str | Path) -> None:
    """Copy a file or a directory of `filesystem` to this machine's disk (its parent directories created)."""
    from pyarrow import fs

    target = Path(local)
    (target if is_dir(filesystem, remote) else target.parent).mkdir(parents=True, exist_ok=True)
    fs.copy_files(remote, str(target), source_filesystem=filesystem)


def _atomic(filesystem: FileSystem, path: str, write: Any) -> None:
    """`write(stream)` into `path` whole. Locally: into a temporary file this call creates itself (never one that
    is there already: a link planted under its name would be followed), then renamed over `path` (which replaces
    a link there rather than writing through it)."""
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if is_local(filesystem):
        tmp = f"{path}.tmp-{os.getpid()}"  # one per process: two writers never share a temporary file
        try:
            if os.path.lexists(tmp):  # left by a killed writer of this pid, or planted
                os.unlink(tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as stream:
                write(stream)
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.remove(tmp)
    else:
        with filesystem.open_output_stream(path) as stream:
            write(stream)
