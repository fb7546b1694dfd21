"""Where an experiment lives: a local (or mounted) directory, or a URI that pyarrow.fs opens (s3://, gs://, ...)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tunetrain.errors import ConfigError

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # `scheme://...`; anything else (C:\runs too) is a path


def is_uri(location: str) -> bool:
    """Whether a storage location is a URI (`scheme://...`) rather than a local path."""
    return bool(_URI_RE.match(location))


def resolve_storage(storage: str, *, what: str = "`search.storage`") -> tuple[FileSystem, str]:
    """The pyarrow filesystem and the path inside it that `storage` names (imports pyarrow); `what` names it in errors.

    A URI (`scheme://...`) goes through `pyarrow.fs.FileSystem.from_uri` (which may reach the network, e.g. to find an
    S3 bucket's region); anything else is a local path, made absolute against the current directory.
    """
    from pyarrow import ArrowException, fs

    if not is_uri(storage):
        return fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(storage))
    try:
        return fs.FileSystem.from_uri(storage)
    except (ArrowException, OSError, ValueError) as exc:
        # note: pyarrow's reasons can run over many lines (hdfs lists every libjvm path it tried); the first says it
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"{what} is {storage!r}, but pyarrow cannot open it: {reason}") from None


def experiment_location(experiment_dir: str | Path) -> tuple[FileSystem, str]:
    """The filesystem and path of an experiment dir: a local path, or a URI such as
    `s3://bucket/runs/NAME?endpoint_override=...` (the search's `storage` with the experiment's name added)."""
    return resolve_storage(str(experiment_dir), what="experiment dir")


def is_local(filesystem: FileSystem) -> bool:
    """A local (or mounted) disk, where a rename is atomic and paths are the user's own."""
    from pyarrow import fs

    return isinstance(filesystem, fs.LocalFileSystem)


def uri_for(storage: str, path: str) -> str:
    """What a user sees for `path` inside the filesystem of `storage`: the path itself on a local disk, else the
    path behind `storage`'s scheme (`s3://bucket/runs/x`)."""
    return f"{storage.split('://', 1)[0]}://{path}" if is_uri(storage) else path
