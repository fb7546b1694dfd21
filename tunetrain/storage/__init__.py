"""The bottom floor of everything that reads or writes an experiment: where it is, how a file is written whole,
and what every file and folder in it is called.

- `location`: a storage location (a local path or a URI such as s3://...) as a pyarrow filesystem and a path.
- `files`: reading and writing files whole on any of those filesystems (local: temporary name, then rename;
  remote: the object whole, and a directory's marker file last).
- `layout`: the name of every file and folder of an experiment dir and a run's output dir, and `ExperimentDir`.
- `lock`: one driver per experiment (`ExperimentLock`).

Nothing here imports anything else of tunetrain but its errors, and nothing heavy until it is used.
"""

from __future__ import annotations

from tunetrain.storage.files import (
    copy_down,
    exists,
    is_dir,
    is_file,
    read_bytes,
    read_json,
    read_parquet,
    upload_dir,
    write_json,
    write_local_file,
    write_parquet,
    write_whole,
)
from tunetrain.storage.layout import ExperimentDir
from tunetrain.storage.location import experiment_location, is_local, is_uri, resolve_storage, uri_for
from tunetrain.storage.lock import ExperimentLock

__all__ = [
    "ExperimentDir",
    "ExperimentLock",
    "copy_down",
    "exists",
    "experiment_location",
    "is_dir",
    "is_file",
    "is_local",
    "is_uri",
    "read_bytes",
    "read_json",
    "read_parquet",
    "resolve_storage",
    "upload_dir",
    "uri_for",
    "write_json",
    "write_local_file",
    "write_parquet",
    "write_whole",
]
