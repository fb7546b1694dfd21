"""A trial's lineage under Population Based Training: which params trained its weights from which step, and the
exploits that copied another trial's checkpoint into it.

A trial's dir holds `lineage.json` once the trial has been exploited (before that, its params are the ones it was
started with, all the way from step 0):

```json
{"segments": [{"step": 0, "params": {...}, "trial_id": "a"},
              {"step": 360, "params": {...}, "trial_id": "c", "parent": "a"}],
 "exploits": [{"trial_id": "a", "step": 360, "evaluation": 4}]}
```

`segments` is the chain of the weights the trial carries now: each segment's params were in force from its step
until the next segment's, in the trial that trained it (`trial_id`; a segment of the donor's chain keeps the donor's
name). Replaying the segments from step 0, each resumed from the checkpoint at its step, re-trains the same weights
(`tunetrain.schedule`). `exploits` lists the trial's own exploits: the donor, the donor's step copied, and the
trial's evaluation count when it happened.

An exploit is made in two halves, so that a kill at any point leaves either the old trial or the new one, never a
mix, and never a checkpoint that a donor's rotation can take away:
1. the driver (`commit_exploit`) copies the donor's latest checkpoint, and its best when that is another, into the
   receiver's `exploit/` dir, then writes `exploit/exploit.json` (the receiver's new lineage): the exploit is decided;
2. the trial, when it starts again (`take_up_exploit`), writes the new lineage.json, replaces its own checkpoints
   with the copied ones and removes `exploit/`; each step can be repeated after a kill.
Every path here is in the storage's pyarrow filesystem, so that it works on a local disk and on s3:// alike.
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunetrain.errors import CheckpointError
from tunetrain.storage import is_dir, is_file, read_json, write_json
from tunetrain.storage.layout import (
    EXPLOIT_DIR,
    EXPLOIT_NAME,
    LINEAGE_NAME,
    OPTIMIZER_NAME,
    PARAMS_NAME,
    RNG_STATE_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_NAME,
)

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

logger = logging.getLogger(__name__)

COPY_ATTEMPTS = 3  # a donor that rotates the checkpoint away mid-copy is copied again from its newer one
# what every checkpoint holds (the loop's own, one process's): a copy without one of them is no checkpoint
CHECKPOINT_FILES = (WEIGHTS_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, RNG_STATE_NAME, PARAMS_NAME, TRAINER_STATE_NAME)


@dataclass(frozen=True)
class Segment:
    """Params in force from `step` on, in the trial `trial_id`; `parent`: the trial it was copied from there."""

    step: int
    params: dict[str, Any]
    trial_id: str
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"step": self.step, "params": dict(self.params), "trial_id": self.trial_id}
        if self.parent is not None:
            out["parent"] = self.parent
        return out


@dataclass(frozen=True)
class Lineage:
    """A trial's chain of segments (oldest first) and its own exploits."""

    segments: tuple[Segment, ...]
    exploits: tuple[dict[str, Any], ...] = field(default=())

    @classmethod
    def start(cls, trial_id: str, params: dict[str, Any]) -> Lineage:
        """The lineage of a trial never exploited: its own params from step 0."""
        return cls((Segment(0, dict(params), trial_id),))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Lineage:
        segments = tuple(Segment(int(s["step"]), dict(s["params"]), str(s["trial_id"]), s.get("parent"))
                         for s in raw["segments"])  # fmt: skip
        return cls(segments, tuple(dict(e) for e in raw.get("exploits", ())))

    def to_dict(self) -> dict[str, Any]:
        return {"segments": [s.to_dict() for s in self.segments], "exploits": [dict(e) for e in self.exploits]}

    @property
    def params(self) -> dict[str, Any]:
        """The params in force now (the last segment's)."""
        return dict(self.segments[-1].params)

    def up_to(self, step: int) -> tuple[Segment, ...]:
        """The segments that trained the weights of `step`: those that start before it."""
        return tuple(s for s in self.segments if s.step < step) or self.segments[:1]

    def exploited(
        self, *, receiver: str, step: int, params: dict[str, Any], donor: str, evaluation: int, before: Lineage
    ) -> Lineage:
        """The receiver's lineage after it takes this (the donor's) checkpoint of `step` with `params`; `before` is
        the receiver's own lineage, whose exploits it keeps."""
        segments = (*self.up_to(step), Segment(step, dict(params), receiver, donor))
        exploit = {"trial_id": donor, "step": step, "evaluation": evaluation}
        return Lineage(segments, (*before.exploits, exploit))

    def segment_at(self, step: int) -> Segment:
        """The segment in force at `step`."""
        found = self.segments[0]
        for segment in self.segments:
            if segment.step <= step:
                found = segment
        return found


def read_lineage(filesystem: FileSystem, trial_path: str) -> Lineage | None:
    """The trial's lineage.json, or None for a trial never exploited."""
    raw = read_json(filesystem, f"{trial_path}/{LINEAGE_NAME}")
    if raw is None:
        return None
    try:
        return Lineage.from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{trial_path}/{LINEAGE_NAME} is not a lineage tunetrain wrote ({type(exc).__name__}: {exc})"
        ) from None


def lineage_of(filesystem: FileSystem, trial_path: str, trial_id: str, params: dict[str, Any]) -> Lineage:
    """The trial's lineage: its lineage.json, or (never exploited) its own `params` from step 0."""
    return read_lineage(filesystem, trial_path) or Lineage.start(trial_id, params)


# --- an exploit, made by the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exploit:
    """What `commit_exploit` copied: the donor's step, and the receiver's new lineage."""

    step: int
    lineage: Lineage
    checkpoints: tuple[str, ...]


def commit_exploit(
    filesystem: FileSystem,
    *,
    receiver_path: str,
    receiver_id: str,
    receiver_params: dict[str, Any],
    donor_path: str,
    donor_id: str,
    donor: Lineage | None,
    donor_params: dict[str, Any],
    params: dict[str, Any],
    evaluation: int,
) -> Exploit | None:
    """Copy the donor's latest checkpoint (and its best, when that is another) into the receiver's `exploit/` dir
    and decide the exploit there (exploit.json, last). None when the donor has no complete checkpoint to give.

    `donor` is the donor's lineage.json as read when `params` were explored from it (None: it has none, and its
    params are `donor_params`, those it was started with; the receiver's likewise). One that changed by the end
    of the copy (the donor took an exploit up meanwhile) calls the exploit off: `params` came from the old one."""
    pending = f"{receiver_path}/{EXPLOIT_DIR}"
    receiver = lineage_of(filesystem, receiver_path, receiver_id, receiver_params)
    for attempt in range(COPY_ATTEMPTS):
        latest = _latest_complete(filesystem, donor_path)
        if latest is None:
            return None
        step, name = latest
        state = read_json(filesystem, f"{donor_path}/{name}/{TRAINER_STATE_NAME}") or {}
        best = posixpath.basename(state.get("best_model_checkpoint") or "")
        names = (name, best) if best and best != name and is_file(filesystem, _state_of(donor_path, best)) else (name,)
        if is_dir(filesystem, pending):
            filesystem.delete_dir(pending)  # an earlier exploit's, never taken up or never decided: replaced
        try:
            _copy_checkpoints(filesystem, donor_path, pending, names)
        except (FileNotFoundError, OSError) as exc:  # the donor rotated one away while it was copied
            logger.debug("copying %s from %s failed (attempt %d): %s", names, donor_path, attempt + 1, exc)
            continue
        if read_lineage(filesystem, donor_path) != donor:
            logger.info("trial %s took another's checkpoint up while it was copied: no exploit", donor_id)
            break
        lineage = (donor or Lineage.start(donor_id, donor_params)).exploited(
            receiver=receiver_id, step=step, params=params, donor=donor_id, evaluation=evaluation, before=receiver
        )
        write_json(filesystem, f"{pending}/{EXPLOIT_NAME}", {"lineage": lineage.to_dict(), "checkpoints": list(names)})
        return Exploit(step, lineage, names)
    if is_dir(filesystem, pending):
        filesystem.delete_dir(pending)
    return None


def _copy_checkpoints(filesystem: FileSystem, source: str, target: str, names: tuple[str, ...]) -> None:
    """Copy each checkpoint whole, its trainer_state.json last (what marks a checkpoint complete); one whose
    trainer_state.json went away meanwhile (rotated) fails the copy."""
    from pyarrow import fs

    for name in names:
        files = filesystem.get_file_info(fs.FileSelector(f"{source}/{name}", recursive=True))
        filesystem.create_dir(f"{target}/{name}", recursive=True)
        plain = (f for f in files if f.type == fs.FileType.File)
        ordered = sorted(plain, key=lambda f: f.base_name == TRAINER_STATE_NAME)
        missing = set(CHECKPOINT_FILES) - {f.base_name for f in ordered}
        if missing:  # rotated away (or cut short) while it was listed
            raise FileNotFoundError(f"{source}/{name} has no {', '.join(sorted(missing))}")
        for info in ordered:
            relative = posixpath.relpath(info.path, f"{source}/{name}")
            destination = f"{target}/{name}/{relative}"
            filesystem.create_dir(posixpath.dirname(destination), recursive=True)
            filesystem.copy_file(info.path, destination)


def _latest_complete(filesystem: FileSystem, trial_path: str) -> tuple[int, str] | None:
    """(step, name) of the trial's latest checkpoint that is complete (has its trainer_state.json)."""
    return next(
        ((step, name) for step, name in reversed(_checkpoints(filesystem, trial_path))
         if is_file(filesystem, _state_of(trial_path, name))),
        None,
    )  # fmt: skip


def _checkpoints(filesystem: FileSystem, path: str) -> list[tuple[int, str]]:
    """(step, name) of the checkpoint dirs directly under `path`, oldest first."""
    from pyarrow import fs

    from tunetrain import checkpoint as ckpt

    found = filesystem.get_file_info(fs.FileSelector(path, allow_not_found=True))
    dirs = (info.base_name for info in found if info.type == fs.FileType.Directory)
    steps = ((ckpt.checkpoint_step(name), name) for name in dirs)
    return sorted((step, name) for step, name in steps if step is not None)


def _state_of(trial_path: str, name: str) -> str:
    return f"{trial_path}/{name}/{TRAINER_STATE_NAME}"


# --- taking it up, in the trial ----------------------------------------------------------------------------------


def take_up_exploit(filesystem: FileSystem, trial_path: str) -> Lineage | None:
    """Take up an exploit the driver decided for this trial (see the module docstring); the new lineage, or None when
    there was none to take up. An `exploit/` dir without its exploit.json (the driver was killed while copying) is
    removed: the exploit never happened. Safe to repeat after a kill at any point."""
    pending = f"{trial_path}/{EXPLOIT_DIR}"
    if not is_dir(filesystem, pending):
        return None
    decided = read_json(filesystem, f"{pending}/{EXPLOIT_NAME}")
    if decided is None:
        filesystem.delete_dir(pending)
        return None
    try:
        lineage = Lineage.from_dict(decided["lineage"])
        names = [str(name) for name in decided["checkpoints"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{pending}/{EXPLOIT_NAME} is not an exploit tunetrain decided ({type(exc).__name__}: {exc})"
        ) from None
    write_json(filesystem, f"{trial_path}/{LINEAGE_NAME}", lineage.to_dict())
    for _, name in _checkpoints(filesystem, trial_path):
        if name not in names:  # the trial's own checkpoints, of the weights it gives up
            filesystem.delete_dir(f"{trial_path}/{name}")
    for name in names:
        if is_dir(filesystem, f"{pending}/{name}"):
            if is_dir(filesystem, f"{trial_path}/{name}"):
                filesystem.delete_dir(f"{trial_path}/{name}")
            _move_dir(filesystem, f"{pending}/{name}", f"{trial_path}/{name}")
    filesystem.delete_dir(pending)
    return lineage


def _move_dir(filesystem: FileSystem, source: str, target: str) -> None:
    """A rename on a local disk; a copy, then a delete, in an object store (which has no rename of a directory)."""
    from pyarrow import fs

    from tunetrain.storage import is_local

    if is_local(filesystem):
        filesystem.move(source, target)
        return
    fs.copy_files(source, target, source_filesystem=filesystem, destination_filesystem=filesystem)
    filesystem.delete_dir(source)
