"""Ray's own saved state of a search, restored only from a copy this user's tunetrain sealed, plus the token
checkpoints Ray may have deleted too early.

Ray's state holds pickles (tuner.pkl, the searcher's, and the controller's JSON has some inside), and restoring it
unpickles them. Whoever can write the storage could put code there for the driver to run, so the driver seals each
snapshot Ray writes, as Ray wrote it in the driver's own staging dir, with a key kept outside the storage
(`tunetrain.storage.signing`), and a resume restores that copy and nothing else. It is also what a snapshot cut short
by a kill or a full disk is replaced with.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError, StorageError
from tunetrain.storage import is_file, read_bytes, write_whole
from tunetrain.storage.layout import SEALED_NAME, SET_ASIDE_DIR, TOKEN_NAME
from tunetrain.storage.signing import KEY_FILE_ENV, SealBroken, key_file, load_key, seal, unseal

if TYPE_CHECKING:
    from tunetrain.storage import ExperimentDir

logger = logging.getLogger(__name__)

RAY_TRIAL_PREFIX = "trial_"  # Ray's dir of a trial is `trial_<id>` (see backend.trial_dirname)
TUNER_NAME = "tuner.pkl"  # the Tuner's own state, written once when a search starts
_RAY_CHECKPOINT = re.compile(r"checkpoint_(\d+)")  # Ray's name for the n-th checkpoint a trial reported
_RAY_STATE_JSON = ("experiment_state-", "search_gen_state-", "basic-variant-state-")
_SESSION = re.compile(r"-(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.(?:json|pkl)$")  # Ray's session string


def location(exp_dir: ExperimentDir) -> tuple[str, Any]:
    """The experiment's path and filesystem as Ray takes them: a path without its scheme when a filesystem is given."""
    return exp_dir.path, None if exp_dir.is_local else exp_dir.filesystem


def mend_tokens(exp_dir: ExperimentDir) -> None:
    """Put back the token checkpoints Ray deleted after its last saved snapshot, before restoring from it.

    Ray keeps one checkpoint per trial (num_to_keep=1): a trial's newer token replaces the older one at once, and
    the snapshot that points to the newer one is saved (uploaded, on s3) a moment later. A driver killed in that
    moment leaves a snapshot whose token is gone, and Ray then fails to restore that trial ("Could not recover
    from checkpoint as it does not exist on storage anymore"). Tokens hold nothing a trial needs (it resumes from
    its own dir), so any token missing below a trial's newest is written again.
    """
    from pyarrow import fs

    filesystem = exp_dir.filesystem
    for trial_dir in filesystem.get_file_info(fs.FileSelector(exp_dir.path, allow_not_found=True)):
        name = trial_dir.base_name
        if trial_dir.type != fs.FileType.Directory or not name.startswith(RAY_TRIAL_PREFIX):
            continue
        found = filesystem.get_file_info(fs.FileSelector(trial_dir.path))
        numbers = {int(m.group(1)) for m in (_RAY_CHECKPOINT.fullmatch(info.base_name) for info in found) if m}
        for number in range(max(numbers, default=0)):
            if number not in numbers:
                token = f"{trial_dir.path}/checkpoint_{number:06d}"
                trial_path = exp_dir.trial_path(name[len(RAY_TRIAL_PREFIX) :])
                write_whole(filesystem, f"{token}/{TOKEN_NAME}", json.dumps({"trial_dir": trial_path}).encode())


def _ray_state_files(session: str) -> list[str]:
    """The files of one session's snapshot: the controller's state (JSON, with pickles inside), the search
    generator's and the searcher's (pickles), and the callbacks' (a pickle, only when one of them has state)."""
    return [
        f"experiment_state-{session}.json",
        f"search_gen_state-{session}.json",
        f"searcher-state-{session}.pkl",
        f"callback-states-{session}.pkl",
    ]


def is_ray_state(name: str) -> bool:
    """Whether Ray may read (and unpickle) a file of this name at the top of an experiment dir when it restores a
    search: it copies every .json and .pkl there to the driver and picks the newest of each kind."""
    return name.endswith(".pkl") or (name.endswith(".json") and name.startswith(_RAY_STATE_JSON))


def live_state(exp_dir: ExperimentDir) -> list[str]:
    """The names of Ray's state files at the top of the experiment dir."""
    from pyarrow import fs

    found = exp_dir.filesystem.get_file_info(fs.FileSelector(exp_dir.path, allow_not_found=True))
    return sorted(info.base_name for info in found if info.type == fs.FileType.File and is_ray_state(info.base_name))


def snapshot_in(staging_dir: str, session: str) -> dict[str, bytes]:
    """Ray's snapshot of `session` as this driver wrote it in its local staging dir (which Ray then copies to the
    storage): read from there, it is whole and nobody else's."""
    files = {}
    for name in _ray_state_files(session):
        path = Path(staging_dir, name)
        if path.is_file():
            files[name] = path.read_bytes()
    return files


def seal_ray_state(exp_dir: ExperimentDir, files: dict[str, bytes]) -> None:
    """Seal `files` (Ray's snapshot and its tuner.pkl) as the copy a resume restores."""
    key = load_key(create=True)
    write_whole(exp_dir.filesystem, _sealed_path(exp_dir), seal(files, key))


def read_sealed(exp_dir: ExperimentDir) -> dict[str, bytes] | None:
    """The sealed copy of Ray's state: None when there is none; a ConfigError when it was not sealed with this
    user's key (or was damaged)."""
    path = _sealed_path(exp_dir)
    if not is_file(exp_dir.filesystem, path):
        return None
    key = load_key(create=False)
    if key is None:
        raise ConfigError(_unsealed(exp_dir, f"it was sealed with a key this machine does not have ({key_file()})"))
    try:
        return unseal(read_bytes(exp_dir.filesystem, path), key)
    except SealBroken as exc:
        raise ConfigError(_unsealed(exp_dir, f"{exp_dir.uri_of(path)} is {exc}")) from None
    except OSError as exc:
        raise StorageError(f"cannot read {exp_dir.uri_of(path)}: {exc}") from None


def can_resume(exp_dir: ExperimentDir) -> bool:
    """Whether there is a sealed snapshot of Ray's to resume from. Ray's state with no sealed copy (written by an
    earlier tunetrain, or by someone else) is refused: restoring it would unpickle what the storage holds."""
    sealed = read_sealed(exp_dir)
    if sealed is None:
        live = live_state(exp_dir)
        if any(name.startswith("experiment_state-") for name in live):
            raise ConfigError(_unsealed(exp_dir, "there is no sealed copy of it"))
        return False
    return any(name.startswith("experiment_state-") for name in sealed)


def restore_sealed(exp_dir: ExperimentDir) -> dict[str, bytes]:
    """Before Ray restores the search: every file of Ray's state at the top of the experiment dir is the sealed
    copy's, byte for byte. One that is not (cut short by a kill or a full disk, newer than the last copy sealed, or
    put there by someone else) is moved to `ray-state-backup/set-aside/` unread, and the sealed one written in its
    place; a warning names it, unless it is the snapshot of an earlier session than the sealed one (Ray leaves one
    per session, and reads only the newest). Returns the sealed files."""
    sealed = read_sealed(exp_dir)
    if sealed is None:
        raise ConfigError(_unsealed(exp_dir, "there is no sealed copy of it"))
    filesystem, path = exp_dir.filesystem, exp_dir.path
    aside = f"{exp_dir.ray_backup_path}/{SET_ASIDE_DIR}"
    if exp_dir.is_local:  # a link planted in their place would have the moves below write wherever it points
        for folder in (exp_dir.ray_backup_path, aside):
            if os.path.islink(folder):
                os.unlink(folder)
    sealed_session = max((_session_of(name) or "" for name in sealed), default="")
    set_aside = []
    for name in live_state(exp_dir):
        if name in sealed and read_bytes(filesystem, f"{path}/{name}") == sealed[name]:
            continue
        filesystem.create_dir(aside)
        if is_file(filesystem, f"{aside}/{name}"):
            filesystem.delete_file(f"{aside}/{name}")
        filesystem.move(f"{path}/{name}", f"{aside}/{name}")
        session = _session_of(name)
        if session is None or session >= sealed_session:
            set_aside.append(name)
    for name, data in sealed.items():
        if not is_file(filesystem, f"{path}/{name}"):
            write_whole(filesystem, f"{path}/{name}", data)
    if set_aside:
        logger.warning(
            "Ray's saved state %s was not the copy tunetrain sealed (cut short by a kill or a full disk, newer "
            "than that copy, or written by someone else): moved unread to %s; resuming from the sealed copy",
            ", ".join(set_aside), exp_dir.uri_of(aside),
        )  # fmt: skip
    return sealed


def _session_of(name: str) -> str | None:
    """The session (a timestamp, which sorts by time) a file of Ray's snapshot names, if it names one."""
    match = _SESSION.search(name)
    return match.group(1) if match else None


def _sealed_path(exp_dir: ExperimentDir) -> str:
    return f"{exp_dir.ray_backup_path}/{SEALED_NAME}"


def _unsealed(exp_dir: ExperimentDir, why: str) -> str:
    return (
        f"Ray's saved state of this search ({exp_dir.uri}) is not restored: {why}, and restoring it would run the "
        f"code its pickles hold. Resume it where it was started (or with that key: ${KEY_FILE_ENV}), or start it "
        "over with --restart"
    )
