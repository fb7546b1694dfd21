"""The storage as Ray sees it while it restores a search: its own state files only as the driver sealed them.

`state.restore_sealed` puts the sealed copy in place before Ray restores, but Ray then reads the storage itself,
file after file, for seconds (minutes, on s3): whoever can write the storage could put a file back in between.
So Ray restores through this filesystem: at the top of the experiment dir, a file of Ray's state (`state.is_ray_state`)
reads as the sealed copy's bytes, from memory, and one the copy does not hold is not there. Everything else, and
a state file once Ray has written it in this run (its own), passes through to the storage.

Pickled (Ray ships its storage to the trials' workers), it is a plain pass-through: workers never read Ray's state.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyarrow import fs

from tunetrain.tuning.ray.state import is_ray_state


class SealedStateHandler(fs.FileSystemHandler):
    """A pyarrow filesystem handler over `real` (see the module docstring)."""

    def __init__(self, real: fs.FileSystem, exp_path: str, sealed: dict[str, bytes]) -> None:
        self.real = real
        self.exp_path = exp_path.rstrip("/")
        self.sealed = dict(sealed)
        self.written: set[str] = set()  # state files Ray wrote in this run: its own, read as they are
        self.active = True

    def __getstate__(self) -> dict[str, Any]:
        return {"real": self.real, "exp_path": self.exp_path, "sealed": {}, "written": set(), "active": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SealedStateHandler) and self.real.equals(other.real)

    __hash__ = None  # type: ignore[assignment]

    # --- what is seen
    def _state_name(self, path: str) -> str | None:
        """The name of a file of Ray's state at the top of the experiment dir that this view decides on, or None."""
        if not self.active:
            return None
        parent, _, name = path.rstrip("/").rpartition("/")
        if parent != self.exp_path or not is_ray_state(name) or name in self.written:
            return None
        return name

    def _seen(self, info: fs.FileInfo) -> fs.FileInfo:
        """What Ray sees of a file: a state file as the sealed copy holds it (NotFound if it holds none)."""
        name = self._state_name(info.path)
        if name is None:
            return info
        if name not in self.sealed:
            return fs.FileInfo(info.path, fs.FileType.NotFound)
        return fs.FileInfo(info.path, fs.FileType.File, size=len(self.sealed[name]), mtime=info.mtime)

    def get_type_name(self) -> str:
        return f"tunetrain-sealed+{self.real.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.real.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[fs.FileInfo]:
        return [self._seen(info) for info in self.real.get_file_info(paths)]

    def get_file_info_selector(self, selector: fs.FileSelector) -> list[fs.FileInfo]:
        seen = [self._seen(info) for info in self.real.get_file_info(selector)]
        found = [info for info in seen if info.type != fs.FileType.NotFound]
        if self.active and selector.base_dir.rstrip("/") == self.exp_path:
            listed = {info.path.rstrip("/").rpartition("/")[2] for info in found}
            for name, data in self.sealed.items():  # removed from the storage since: still what Ray restores
                if name not in listed and name not in self.written:
                    found.append(fs.FileInfo(f"{self.exp_path}/{name}", fs.FileType.File, size=len(data)))
        return found

    def open_input_stream(self, path: str) -> Any:
        name = self._state_name(path)
        if name is None:
            return self.real.open_input_stream(path)
        return pa.BufferReader(self._sealed_bytes(name, path))

    def open_input_file(self, path: str) -> Any:
        name = self._state_name(path)
        if name is None:
            return self.real.open_input_file(path)
        return pa.BufferReader(self._sealed_bytes(name, path))

    def _sealed_bytes(self, name: str, path: str) -> bytes:
        if name not in self.sealed:
            raise FileNotFoundError(f"{path}: not in the sealed copy of Ray's state")
        return self.sealed[name]

    # --- what is written: passed through; a state file Ray writes is its own from then on
    def _writes(self, path: str) -> None:
        name = self._state_name(path)
        if name is not None:
            self.written.add(name)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        self._writes(path)
        return self.real.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        self._writes(path)
        return self.real.open_append_stream(path, metadata=metadata)

    def copy_file(self, src: str, dest: str) -> None:
        self._writes(dest)
        self.real.copy_file(src, dest)

    def move(self, src: str, dest: str) -> None:
        self._writes(dest)
        self.real.move(src, dest)

    def delete_file(self, path: str) -> None:
        self._writes(path)
        self.real.delete_file(path)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.real.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.real.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.real.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        self.real.delete_root_dir_contents()


def sealed_view(filesystem: fs.FileSystem, exp_path: str, sealed: dict[str, bytes]) -> fs.PyFileSystem:
    """`filesystem` with Ray's state at `exp_path` seen as the sealed copy `sealed` (see the module docstring)."""
    return fs.PyFileSystem(SealedStateHandler(filesystem, exp_path, sealed))
