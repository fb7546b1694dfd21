"""Tests for `tunetrain.storage`: locations, files written whole, and the names of an experiment dir.

A `SubTreeFileSystem` over a local folder stands in for remote storage (s3://...): it is not a `LocalFileSystem`,
so it takes the object-store path (no temporary file, no rename), as a real bucket does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pytest
from pyarrow import fs

from tunetrain.errors import ConfigError
from tunetrain.storage import (
    ExperimentDir,
    copy_down,
    exists,
    experiment_location,
    is_dir,
    is_file,
    is_local,
    is_uri,
    read_bytes,
    read_json,
    read_parquet,
    upload_dir,
    uri_for,
    write_json,
    write_parquet,
    write_whole,
)
from tunetrain.storage import files as storage_files

LOCAL = fs.LocalFileSystem()


def _bucket(tmp_path: Path) -> fs.SubTreeFileSystem:
    (tmp_path / "bucket").mkdir()
    return fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- location ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("location", ["s3://bucket/runs", "file:///tmp/runs", "gs://b", "hdfs+x.y-z://host/p"])
def test_a_scheme_makes_a_uri(location):
    assert is_uri(location)


@pytest.mark.parametrize("location", ["runs", "/abs/runs", "~/runs", "./s3://x", "://x", "3s://x", r"C:\runs"])
def test_anything_without_a_scheme_is_a_path(location):
    assert not is_uri(location)


def test_only_a_local_filesystem_is_local(tmp_path):
    assert is_local(LOCAL)
    assert not is_local(_bucket(tmp_path))


def test_uri_for_puts_the_storage_s_scheme_before_a_remote_path():
    assert uri_for("s3://bucket/runs?region=x", "bucket/runs/exp") == "s3://bucket/runs/exp"
    assert uri_for("/data/runs", "/data/runs/exp") == "/data/runs/exp"


def test_an_experiment_dir_pyarrow_cannot_open_is_named_as_the_experiment_dir():
    with pytest.raises(ConfigError, match=re.escape("experiment dir is 'nosuchscheme://runs/x', but pyarrow cannot")):
        experiment_location("nosuchscheme://runs/x")


def test_experiment_location_of_a_path_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filesystem, path = experiment_location(Path("runs") / "exp")
    assert is_local(filesystem) and path == str(tmp_path / "runs" / "exp")


# --- files written whole -------------------------------------------------------------------------------------------


def test_json_round_trip_creates_the_directory_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b" / "state.json"
    value = {"b": [1, 2.5, None], "a": {"nested": True}, "where": Path("/x")}
    write_json(LOCAL, str(path), value)
    assert read_json(LOCAL, str(path)) == {**value, "where": "/x"}  # what JSON cannot hold is written as str
    assert list(json.loads(path.read_text())) == ["a", "b", "where"]  # keys sorted: stable diffs
    assert _names(path.parent) == ["state.json"]


def test_write_whole_replaces_a_file(tmp_path):
    path = str(tmp_path / "data.bin")
    write_whole(LOCAL, path, b"first")
    write_whole(LOCAL, path, b"second")
    assert read_bytes(LOCAL, path) == b"second"
    assert _names(tmp_path) == ["data.bin"]


def test_read_json_of_a_missing_file_is_none(tmp_path):
    assert read_json(LOCAL, str(tmp_path / "missing.json")) is None
    assert read_parquet(LOCAL, str(tmp_path / "missing.parquet")) is None


def test_exists_is_file_and_is_dir(tmp_path):
    write_whole(LOCAL, str(tmp_path / "d" / "f"), b"x")
    assert exists(LOCAL, str(tmp_path / "d")) and is_dir(LOCAL, str(tmp_path / "d"))
    assert not is_file(LOCAL, str(tmp_path / "d"))
    assert is_file(LOCAL, str(tmp_path / "d" / "f")) and not is_dir(LOCAL, str(tmp_path / "d" / "f"))
    assert not exists(LOCAL, str(tmp_path / "nothing"))


@pytest.mark.parametrize("writer", ["json", "parquet"])
def test_a_failed_write_leaves_the_previous_file_and_no_temporary_file(tmp_path, monkeypatch, writer):
    path = str(tmp_path / "file")

    def write(value: int) -> None:
        if writer == "json":
            write_json(LOCAL, path, {"v": value})
        else:
            write_parquet(LOCAL, path, pa.table({"v": [value]}))

    def read() -> int:
        return read_json(LOCAL, path)["v"] if writer == "json" else read_parquet(LOCAL, path).column("v")[0].as_py()

    write(1)

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write(2)
    monkeypatch.undo()
    assert read() == 1
    assert _names(tmp_path) == ["file"]


def test_parquet_round_trip_keeps_values_types_and_metadata(tmp_path):
    table = pa.table({"id": ["a", "b"], "x": [1.5, float("nan")], "n": pa.array([1, None], pa.int64())})
    table = table.replace_schema_metadata({b"metric": b"loss"})
    path = str(tmp_path / "sub" / "t.parquet")
    write_parquet(LOCAL, path, table)
    back = read_parquet(LOCAL, path)
    assert back.schema == table.schema and back.schema.metadata[b"metric"] == b"loss"
    assert back.column("id").to_pylist() == ["a", "b"] and back.column("n").to_pylist() == [1, None]
    assert back.column("x")[1].as_py() != back.column("x")[1].as_py()  # NaN survives as NaN
    assert _names(tmp_path / "sub") == ["t.parquet"]


def test_remote_files_are_written_whole_without_a_temporary_name(tmp_path, monkeypatch):
    remote = _bucket(tmp_path)

    def no_rename(src, dst):
        raise AssertionError("an object store has no rename: the object is replaced whole")

    monkeypatch.setattr(os, "replace", no_rename)
    write_json(remote, "runs/exp/search.json", {"finished": False})
    write_json(remote, "runs/exp/search.json", {"finished": True})
    write_parquet(remote, "runs/exp/results.parquet", pa.table({"v": [1, 2]}))
    assert read_json(remote, "runs/exp/search.json") == {"finished": True}
    assert read_parquet(remote, "runs/exp/results.parquet").column("v").to_pylist() == [1, 2]
    assert _names(tmp_path / "bucket" / "runs" / "exp") == ["results.parquet", "search.json"]


# --- directories up and down ---------------------------------------------------------------------------------------


def test_upload_dir_copies_every_file_with_the_marker_last(tmp_path, monkeypatch):
    local = tmp_path / "checkpoint-5"
    local.mkdir()
    # the marker sorts first by name, so only a deliberate order puts it last
    for name in ("a_marker.json", "model.safetensors", "optimizer.pt", "z.pt"):
        (local / name).write_text(name)
    remote = _bucket(tmp_path)
    copied: list[str] = []
    copy_files = fs.copy_files

    def recording_copy(source, destination, **kwargs):
        copied.append(destination.rsplit("/", 1)[-1])
        return copy_files(source, destination, **kwargs)

    monkeypatch.setattr(fs, "copy_files", recording_copy)
    upload_dir(local, remote, "runs/exp/trials/t1/checkpoint-5", marker="a_marker.json")

    assert copied[-1] == "a_marker.json"
    assert sorted(copied) == ["a_marker.json", "model.safetensors", "optimizer.pt", "z.pt"]
    uploaded = tmp_path / "bucket" / "runs" / "exp" / "trials" / "t1" / "checkpoint-5"
    assert {p.name: p.read_text() for p in uploaded.iterdir()} == {p.name: p.read_text() for p in local.iterdir()}


def test_copy_down_brings_a_remote_dir_to_a_new_local_one(tmp_path):
    remote = _bucket(tmp_path)
    write_whole(remote, "runs/exp/trials/t1/checkpoint-5/model.safetensors", b"weights")
    write_whole(remote, "runs/exp/trials/t1/checkpoint-5/trainer_state.json", b"{}")
    target = tmp_path / "scratch" / "checkpoint-5"
    copy_down(remote, "runs/exp/trials/t1/checkpoint-5", target)
    assert _names(target) == ["model.safetensors", "trainer_state.json"]
    assert (target / "model.safetensors").read_bytes() == b"weights"


# --- the experiment dir --------------------------------------------------------------------------------------------


def test_experiment_dir_names_every_file_under_its_path(tmp_path):
    exp = ExperimentDir.open(str(tmp_path), "exp")
    base = f"{tmp_path}/exp"
    assert exp.is_local and exp.path == base and exp.uri == base
    assert exp.state_path == f"{base}/search.json"
    assert exp.results_path == f"{base}/results.parquet"
    assert exp.history_path == f"{base}/history.parquet"
    assert exp.journal_path == f"{base}/optuna.journal"
    assert exp.ray_backup_path == f"{base}/ray-state-backup"
    assert exp.trial_path("t1") == f"{base}/trials/t1"
    assert exp.ended_path("t1") == f"{base}/trials/t1/ended.json"
    assert exp.tensorboard_path("t1") == f"{base}/tensorboard/t1"
    assert exp.uri_of(exp.trial_path("t1")) == f"{base}/trials/t1"


def test_experiment_dir_of_a_relative_path_or_a_trailing_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ExperimentDir.open("runs/", "exp").path == f"{tmp_path}/runs/exp"


def test_experiment_dir_of_a_file_uri_is_local_and_keeps_its_uri(tmp_path):
    exp = ExperimentDir.open(f"file://{tmp_path}/runs", "exp")
    assert exp.is_local and exp.path == f"{tmp_path}/runs/exp"
    assert exp.uri == f"file://{tmp_path}/runs/exp"
    assert exp.uri_of(exp.trial_path("t1")) == f"{tmp_path}/runs/exp/trials/t1"  # local: the user's own path


def test_experiment_dir_on_remote_storage_shows_uris(tmp_path):
    exp = ExperimentDir(_bucket(tmp_path), "bucket/runs/exp", "s3://bucket/runs/exp")
    assert not exp.is_local
    assert exp.uri_of(exp.trial_path("t1")) == "s3://bucket/runs/exp/trials/t1"
    assert exp.uri_of(exp.results_path) == "s3://bucket/runs/exp/results.parquet"


def test_a_bad_storage_scheme_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"`search.storage` is 'nosuchscheme://x', but pyarrow cannot open it"):
        ExperimentDir.open("nosuchscheme://x", "exp")


@pytest.mark.parametrize("where", ["local", "remote"])
def test_experiment_dir_state_round_trip_and_remove(tmp_path, where):
    if where == "local":
        exp = ExperimentDir.open(str(tmp_path), "exp")
    else:
        exp = ExperimentDir(_bucket(tmp_path), "runs/exp", "s3://runs/exp")
    assert not exp.exists() and exp.read_state() is None
    exp.write_state({"experiment": {"name": "exp"}, "finished": False})
    assert exp.exists()
    assert exp.read_state() == {"experiment": {"name": "exp"}, "finished": False}
    write_whole(exp.filesystem, f"{exp.trial_path('t1')}/model.safetensors", b"w")
    exp.remove()
    assert not exp.exists() and exp.read_state() is None
    exp.remove()  # nothing left to remove is no error
    assert not exists(exp.filesystem, exp.path)


@pytest.mark.parametrize("module", ["location", "files", "layout"])
def test_storage_imports_nothing_of_tunetrain_but_its_errors(module):
    # the bottom floor (its docstring's promise): anything of tunetrain above it imported here makes an import cycle
    source = (Path(storage_files.__file__).parent / f"{module}.py").read_text()
    imported = set(re.findall(r"^\s*(?:from|import) (tunetrain[.\w]*)", source, flags=re.M))
    assert {name for name in imported if not name.startswith("tunetrain.storage.")} <= {"tunetrain.errors"}


@pytest.mark.parametrize(
    "content", [b'{"status": "runn', b"\xff\xfe\x00garbage", b""], ids=["cut short", "not utf-8", "empty"]
)
@pytest.mark.parametrize("where", ["local", "remote"])
def test_a_damaged_json_file_is_one_line_naming_it(tmp_path, content, where):
    filesystem = LOCAL if where == "local" else _bucket(tmp_path)
    path = str(tmp_path / "search.json") if where == "local" else "runs/search.json"
    write_whole(filesystem, path, content)
    with pytest.raises(ConfigError, match=rf"^{re.escape(repr(path))} is damaged \(.*\): restore it") as err:
        read_json(filesystem, path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content",
    [b"garbage" * 20, b"PAR1" + b"\0" * 50 + b"PAR1", b""],
    ids=["garbage", "garbage between the magic bytes", "empty"],
)
def test_a_damaged_parquet_file_is_one_line_naming_it(tmp_path, content):
    path = str(tmp_path / "results.parquet")
    write_parquet(LOCAL, path, pa.table({"v": [1, 2]}))
    whole = Path(path).read_bytes()
    for damaged in (content, whole[: len(whole) // 2]):
        Path(path).write_bytes(damaged)
        with pytest.raises(ConfigError, match=rf"^{re.escape(repr(path))} is damaged \(.*\): restore it") as err:
            read_parquet(LOCAL, path)
        assert "\n" not in str(err.value)


def test_a_link_planted_under_the_temporary_name_is_not_written_through(tmp_path):
    # whoever can write the experiment dir can guess `FILE.tmp-PID`: a link there must not send the write elsewhere
    import os

    from pyarrow.fs import LocalFileSystem

    from tunetrain.storage import write_whole

    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target = tmp_path / "exp" / "results.json"
    target.parent.mkdir()
    (target.parent / f"results.json.tmp-{os.getpid()}").symlink_to(victim)
    write_whole(LocalFileSystem(), str(target), b"new")
    assert victim.read_bytes() == b"keep" and target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]
    # and a link in place of the file itself is replaced, not written through
    target.unlink()
    target.symlink_to(victim)
    write_whole(LocalFileSystem(), str(target), b"newer")
    assert victim.read_bytes() == b"keep" and not target.is_symlink() and target.read_bytes() == b"newer"
