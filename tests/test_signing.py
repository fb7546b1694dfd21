"""Ray's saved state sealed with a key outside the storage, and a resume that restores only the sealed copy
(tunetrain.storage.signing, tunetrain.tuning.ray.state). The search end to end: test_search_cli.py."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from tunetrain.errors import ConfigError
from tunetrain.storage import ExperimentDir
from tunetrain.storage.signing import KEY_FILE_ENV, SealBroken, key_file, load_key, seal, unseal
from tunetrain.tuning.ray import state

FILES = {
    "experiment_state-A.json": b'{"trial_data": []}',
    "searcher-state-A.pkl": b"\x80\x04K\x01.",
    "tuner.pkl": b"t.",
}


@pytest.fixture
def key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "config" / "tunetrain" / "state.key"))
    return load_key(create=True)


def test_the_key_is_made_once_readable_by_its_owner_only(tmp_path, monkeypatch):
    path = tmp_path / "config" / "tunetrain" / "state.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    assert load_key(create=False) is None and not path.exists()
    made = load_key(create=True)
    assert len(made) == 32 and key_file() == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key(create=True) == made == load_key(create=False)


def test_the_key_defaults_to_the_users_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert key_file() == tmp_path / "tunetrain" / "state.key"


@pytest.mark.parametrize("content", ["", "not hex", "ab" * 8], ids=["empty", "not hex", "too short"])
def test_a_damaged_key_is_one_line_naming_it(tmp_path, monkeypatch, content):
    path = tmp_path / "state.key"
    path.write_text(content)
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    with pytest.raises(ConfigError, match=f"tunetrain's key {path} is not 32 or more bytes in hex"):
        load_key(create=False)


def test_sealed_files_come_back_whole(key):
    assert unseal(seal(FILES, key), key) == FILES


def _forged(document: bytes, files: dict[str, bytes]) -> bytes:
    """`files` in a sealed document's form, under the MAC of `document` (what someone without the key can make)."""
    magic, header, _ = document.split(b"\n", 2)
    mac = json.loads(header)["mac"]
    names = sorted(files)
    forged = {"files": [[name, len(files[name])] for name in names], "mac": mac}
    return b"\n".join([magic, json.dumps(forged).encode(), b"".join(files[name] for name in names)])


@pytest.mark.parametrize(
    "tamper",
    ["content", "name", "added", "removed", "cut short", "grown", "other key", "not ours"],
)
def test_a_sealed_copy_changed_in_any_way_is_refused(key, tamper):
    document = seal(FILES, key)
    assert _forged(document, dict(FILES)) == document  # the forger's form is the real one
    files = dict(FILES)
    if tamper == "content":
        files["searcher-state-A.pkl"] = b"cos\nsystem\n."  # another pickle
    elif tamper == "name":
        files["searcher-state-Z.pkl"] = files.pop("searcher-state-A.pkl")
    elif tamper == "added":
        files["callback-states-A.pkl"] = b"."
    elif tamper == "removed":
        del files["tuner.pkl"]
    data = _forged(document, files)
    if tamper == "cut short":
        data = document[:-3]
    elif tamper == "grown":
        data = document + b"more"
    elif tamper == "other key":
        data = seal(FILES, os.urandom(32))
    elif tamper == "not ours":
        data = b'{"files": {}}'
    with pytest.raises(SealBroken):
        unseal(data, key)


def _exp_dir(tmp_path):
    from pyarrow.fs import LocalFileSystem

    path = tmp_path / "exp"
    path.mkdir()
    return ExperimentDir(LocalFileSystem(), str(path), str(path))


def test_a_resume_restores_the_sealed_copy_and_sets_everything_else_aside_unread(tmp_path, key, caplog):
    exp = _exp_dir(tmp_path)
    state.seal_ray_state(exp, FILES)
    root = tmp_path / "exp"
    (root / "experiment_state-A.json").write_bytes(FILES["experiment_state-A.json"])  # as sealed: kept
    (root / "searcher-state-A.pkl").write_bytes(b"planted pickle")  # replaced
    (root / "experiment_state-Z.json").write_bytes(b'{"planted": "newer"}')  # newer name: Ray would pick it
    (root / "callback-states-Z.pkl").write_bytes(b"planted")
    (root / "anything.pkl").write_bytes(b"planted")
    (root / "search.json").write_text("{}")  # tunetrain's own: not Ray's to set aside
    # tuner.pkl missing (removed by someone): written back
    with caplog.at_level(logging.WARNING, logger="tunetrain"):
        restored = state.restore_sealed(exp)
    assert restored == FILES
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and state.is_ray_state(p.name)} == FILES
    aside = root / "ray-state-backup" / "set-aside"
    assert sorted(p.name for p in aside.iterdir()) == [
        "anything.pkl", "callback-states-Z.pkl", "experiment_state-Z.json", "searcher-state-A.pkl",
    ]  # fmt: skip
    assert (aside / "searcher-state-A.pkl").read_bytes() == b"planted pickle"  # kept, never read as a pickle
    assert (root / "search.json").exists()
    assert "was not the copy tunetrain sealed" in caplog.text and "searcher-state-A.pkl" in caplog.text


def test_a_resume_with_nothing_changed_moves_nothing(tmp_path, key, caplog):
    exp = _exp_dir(tmp_path)
    state.seal_ray_state(exp, FILES)
    for name, data in FILES.items():
        (tmp_path / "exp" / name).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="tunetrain"):
        state.restore_sealed(exp)
    assert not (tmp_path / "exp" / "ray-state-backup" / "set-aside").exists()
    assert "sealed" not in caplog.text


def test_what_can_resume(tmp_path, key):
    exp = _exp_dir(tmp_path)
    assert not state.can_resume(exp)  # nothing there
    state.seal_ray_state(exp, {"tuner.pkl": b"t."})
    assert not state.can_resume(exp)  # killed before Ray's first snapshot: the search starts anew
    state.seal_ray_state(exp, FILES)
    assert state.can_resume(exp)


def test_rays_state_with_no_sealed_copy_is_refused_in_one_line(tmp_path, key):
    # written by an earlier tunetrain, or by someone else
    exp = _exp_dir(tmp_path)
    (tmp_path / "exp" / "experiment_state-A.json").write_bytes(b"{}")
    with pytest.raises(ConfigError) as caught:
        state.can_resume(exp)
    message = str(caught.value)
    assert "\n" not in message
    assert "is not restored: there is no sealed copy of it, and restoring it would run the code its pickles hold" in (
        message
    )
    assert "--restart" in message and KEY_FILE_ENV in message


def test_a_copy_sealed_with_another_key_or_none_here_is_refused(tmp_path, key, monkeypatch):
    exp = _exp_dir(tmp_path)
    state.seal_ray_state(exp, FILES)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "elsewhere.key"))  # another machine: no key yet
    with pytest.raises(ConfigError, match=r"sealed with a key this machine does not have \(.*elsewhere.key\)"):
        state.can_resume(exp)
    load_key(create=True)
    with pytest.raises(ConfigError, match=r"sealed\.json is not sealed with this key"):
        state.restore_sealed(exp)
    assert not (tmp_path / "exp" / "tuner.pkl").exists()  # nothing written, nothing moved


def test_a_trials_pickled_error_in_the_storage_is_never_read(tmp_path):
    # Ray pickles a trial's exception next to it in the driver's own staging dir, then copies it to the storage,
    # where the ResultGrid would unpickle it at the end of the search: the bookkeeper reads the driver's copy and
    # makes Ray forget the file
    ray_cloudpickle = pytest.importorskip("ray.cloudpickle")
    from tunetrain.tuning.ray.driver import _trial_error

    local = tmp_path / "error.pkl"
    local.write_bytes(ray_cloudpickle.dumps(ValueError("boom")))

    class Metadata:
        pickled_error_filename = "error.pkl"

    class Trial:
        pickled_error_file = str(local)
        run_metadata = Metadata()

        def get_error(self):
            return None

    trial = Trial()
    error = _trial_error(trial)
    assert isinstance(error, ValueError) and str(error) == "boom"
    assert trial.run_metadata.pickled_error_filename is None  # ResultGrid._populate_exception then reads error.txt


def test_the_snapshots_of_earlier_sessions_are_set_aside_without_a_warning(tmp_path, key, caplog):
    # a search resumed once has Ray's snapshot of each session at the top; Ray reads only the newest
    old, new = "2026-11-29_10-00-00", "2026-11-29_11-00-00"
    sealed = {f"experiment_state-{new}.json": b"{}", f"searcher-state-{new}.pkl": b"s.", "tuner.pkl": b"t."}
    exp = _exp_dir(tmp_path)
    state.seal_ray_state(exp, sealed)
    root = tmp_path / "exp"
    for name, data in sealed.items():
        (root / name).write_bytes(data)
    (root / f"experiment_state-{old}.json").write_bytes(b"{}")
    (root / f"searcher-state-{old}.pkl").write_bytes(b"s.")
    with caplog.at_level(logging.WARNING, logger="tunetrain"):
        state.restore_sealed(exp)
    assert "sealed" not in caplog.text
    assert sorted(p.name for p in (root / "ray-state-backup" / "set-aside").iterdir()) == [
        f"experiment_state-{old}.json", f"searcher-state-{old}.pkl",
    ]  # fmt: skip


def test_a_link_planted_in_place_of_the_set_aside_folder_is_not_followed(tmp_path, key):
    elsewhere = tmp_path / "elsewhere"  # e.g. the driver's staging dir, whose newest pickle Ray would load
    elsewhere.mkdir()
    exp = _exp_dir(tmp_path)
    state.seal_ray_state(exp, FILES)
    root = tmp_path / "exp"
    (root / "ray-state-backup" / "set-aside").symlink_to(elsewhere)
    (root / "searcher-state-9999.pkl").write_bytes(b"planted")
    state.restore_sealed(exp)
    assert list(elsewhere.iterdir()) == []
    aside = root / "ray-state-backup" / "set-aside"
    assert not aside.is_symlink() and (aside / "searcher-state-9999.pkl").read_bytes() == b"planted"


def test_ray_reads_its_state_through_a_view_that_holds_only_the_sealed_copy(tmp_path):
    # between the resume's check and Ray's own reads, someone rewrites the storage: Ray still sees the sealed copy
    import pickle

    from pyarrow import fs

    from tunetrain.tuning.ray.sealed_fs import sealed_view

    root = tmp_path / "exp"
    (root / "trial_a").mkdir(parents=True)
    (root / "trial_a" / "result.json").write_text("{}")
    for name in FILES:
        (root / name).write_bytes(b"rewritten after the check")
    (root / "searcher-state-9999.pkl").write_bytes(b"planted")
    view = sealed_view(fs.LocalFileSystem(), str(root), FILES)

    listing = {info.base_name: info for info in view.get_file_info(fs.FileSelector(str(root)))}
    assert set(listing) == {*FILES, "trial_a"}  # the planted one is not there
    assert listing["tuner.pkl"].size == len(FILES["tuner.pkl"])
    with view.open_input_file(str(root / "tuner.pkl")) as file:
        assert file.read() == FILES["tuner.pkl"]
    with view.open_input_stream(str(root / "searcher-state-A.pkl")) as stream:
        assert stream.read() == FILES["searcher-state-A.pkl"]
    assert view.get_file_info(str(root / "searcher-state-9999.pkl")).type == fs.FileType.NotFound
    with view.open_input_stream(str(root / "trial_a" / "result.json")) as stream:  # not Ray's state: as it is
        assert stream.read() == b"{}"
    (root / "experiment_state-A.json").unlink()  # deleted from the storage: still what Ray restores
    assert "experiment_state-A.json" in {i.base_name for i in view.get_file_info(fs.FileSelector(str(root)))}

    # what Ray writes in this run is its own: read back as written
    with view.open_output_stream(str(root / "experiment_state-B.json")) as stream:
        stream.write(b'{"new": 1}')
    with view.open_input_stream(str(root / "experiment_state-B.json")) as stream:
        assert stream.read() == b'{"new": 1}'

    # shipped to a worker, it is the storage as it is (workers never read Ray's state)
    shipped = pickle.loads(pickle.dumps(view))
    with shipped.open_input_stream(str(root / "searcher-state-9999.pkl")) as stream:
        assert stream.read() == b"planted"
