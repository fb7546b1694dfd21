"""Ray's own saved state of a search, kept restorable: a backup of its last whole snapshot, put back when a kill
or a full disk cut the snapshot short, and the token checkpoints it may have deleted too early."""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

from ray import tune

from tunetrain.errors import StorageError
from tunetrain.storage import is_file, read_bytes, write_whole
from tunetrain.storage.layout import DAMAGED_SUFFIX, RAY_BACKUP_DIR, TOKEN_NAME

if TYPE_CHECKING:
    from tunetrain.storage import ExperimentDir

logger = logging.getLogger(__name__)

RAY_TRIAL_PREFIX = "trial_"  # Ray's dir of a trial is `trial_<id>` (see backend.trial_dirname)
_RAY_CHECKPOINT = re.compile(r"checkpoint_(\d+)")  # Ray's name for the n-th checkpoint a trial reported
_RAY_STATE = re.compile(r"experiment_state-(.+)\.json")  # Ray's snapshot of a search, one per driver session
BACKUP_EVERY_S = 10.0


def can_resume(exp_dir: ExperimentDir) -> bool:
    """Whether Ray's own state of this experiment is there to restore from."""
    path, filesystem = location(exp_dir)
    return tune.Tuner.can_restore(path, storage_filesystem=filesystem)


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
    """The files of one session's snapshot: the controller's state (JSON) and the searcher's (pickles)."""
    return [f"experiment_state-{session}.json", f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl"]


def _sessions(filesystem: Any, path: str) -> list[str]:
    """The sessions that saved a snapshot in `path`, oldest first (Ray restores from the newest)."""
    from pyarrow import fs

    found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    return sorted(m.group(1) for m in (_RAY_STATE.fullmatch(info.base_name) for info in found) if m)


def back_up_ray_state(filesystem: Any, exp_path: str) -> bool:
    """Copy Ray's newest snapshot, if whole, to `ray-state-backup/`, each file written whole.

    Ray overwrites its snapshot in place (pyarrow's copy): a full disk, or a kill in the middle, leaves it cut
    short, and Ray can then not restore the search. `repair_ray_state` puts the backup back.
    """
    sessions = _sessions(filesystem, exp_path)
    if not sessions:
        return False
    names = [name for name in _ray_state_files(sessions[-1]) if is_file(filesystem, f"{exp_path}/{name}")]
    files = {name: read_bytes(filesystem, f"{exp_path}/{name}") for name in names}
    for name, data in files.items():  # one that is not whole (Ray is writing it): ValueError, and no backup now
        if name.startswith("experiment_state-"):
            json.loads(data)
        elif not data.endswith(b"."):  # the searcher's state is pickled (search_gen_state's too), and a pickle ends
            # with its STOP opcode
            raise ValueError(f"{name} is cut short")
    for name, data in files.items():
        write_whole(filesystem, f"{exp_path}/{RAY_BACKUP_DIR}/{name}", data)
    for old in _sessions(filesystem, f"{exp_path}/{RAY_BACKUP_DIR}")[:-1]:
        for name in _ray_state_files(old):
            if is_file(filesystem, f"{exp_path}/{RAY_BACKUP_DIR}/{name}"):
                filesystem.delete_file(f"{exp_path}/{RAY_BACKUP_DIR}/{name}")
    return True


def repair_ray_state(exp_dir: ExperimentDir) -> None:
    """Before a restore: a snapshot Ray left cut short is moved aside (`.damaged`), and the backup put in its place."""
    filesystem, path = exp_dir.filesystem, exp_dir.path
    sessions = _sessions(filesystem, path)
    if not sessions:
        return
    newest = _ray_state_files(sessions[-1])
    try:
        json.loads(read_bytes(filesystem, f"{path}/{newest[0]}"))
        return
    except (OSError, ValueError):
        pass
    backup = _sessions(filesystem, f"{path}/{RAY_BACKUP_DIR}")
    if not backup:
        raise StorageError(
            f"Ray's saved state of this search ({path}/{newest[0]}) was cut short (a full disk, or a kill while it was "
            f"written) before any backup of it was made: the search cannot resume; --restart starts it over"
        )
    logger.warning("Ray's saved state %s was cut short (a full disk, or a kill): resuming from its backup", newest[0])
    for name in newest:
        if is_file(filesystem, f"{path}/{name}"):
            filesystem.move(f"{path}/{name}", f"{path}/{name}{DAMAGED_SUFFIX}")
    for name in _ray_state_files(backup[-1]):
        if is_file(filesystem, f"{path}/{RAY_BACKUP_DIR}/{name}"):
            write_whole(filesystem, f"{path}/{name}", read_bytes(filesystem, f"{path}/{RAY_BACKUP_DIR}/{name}"))
