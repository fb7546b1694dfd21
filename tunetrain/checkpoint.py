"""Checkpoints of one run: save, find the latest, load, rotate.

A checkpoint is a directory `checkpoint-{step}/` written under a temporary name and renamed into place, so a
kill never leaves a half-written directory that looks complete. Nothing here unpickles arbitrary objects:
weights are safetensors, the rest loads with `torch.load(weights_only=True)` or is JSON.

A checkpoint damaged afterwards (cut short while it was copied, overwritten) is found before a resume builds
anything (`check_checkpoint` reads every file, tensors mapped rather than copied): named explicitly, it is a one-line
CheckpointError; as "the latest" (`find_latest_usable`), it is moved aside and the complete one before it is used.

We do not use `accelerate.Accelerator.save_state` / `load_state`: it needs the optimizer wrapped by
`accelerator.prepare` (a measured ~12% per-step cost on small models), and its `load_state` swallows any error
while restoring RNG states, which would silently break exact resume.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tunetrain.errors import CheckpointError, StorageError
from tunetrain.storage.layout import (  # the file names, defined with every other name of an experiment
    ARGS_NAME,
    CHECKPOINT_PREFIX,
    DAMAGED_SUFFIX,
    OPTIMIZER_NAME,
    PARAMS_NAME,
    RNG_STATE_NAME,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_NAME,
)

logger = logging.getLogger(__name__)

PREFIX = CHECKPOINT_PREFIX
REQUIRED_FILES = (WEIGHTS_NAME, OPTIMIZER_NAME, SCHEDULER_NAME, RNG_STATE_NAME, TRAINER_STATE_NAME, PARAMS_NAME)
_CHECKPOINT_RE = re.compile(rf"^{PREFIX}-(\d+)$")
_TEMP_PREFIX = f".tmp-{PREFIX}"  # a save in progress: `.tmp-checkpoint-{step}-{pid}`, renamed into place when complete
_ROTATED_PREFIX = ".rotated"  # a checkpoint being deleted by the rotation: `.rotated-checkpoint-{step}-{pid}`


@dataclass
class TrainerState:
    """What the loop needs besides tensors to continue exactly where it stopped (`trainer_state.json`)."""

    global_step: int = 0
    epoch: float = 0.0
    max_steps: int = 0
    steps_per_epoch: int = 0
    train_batch_size: int = 0
    num_evaluations: int = 0
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    evaluations_without_improvement: int = 0
    # the loss summed since the last log line, so a resumed run logs the same averages
    logging_loss_sum: float = 0.0
    logging_loss_steps: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    # torch's intra-op threads the run trained with (0: not recorded): a re-train of an export uses as many, since
    # the floating-point sums, and so the weights, depend on it
    num_threads: int = 0
    # the data-parallel world size: processes that each trained on their share of every global batch
    num_processes: int = 1

    def to_json(self) -> str:
        # the fields as they are (asdict would deep-copy log_history, which grows with every evaluation), on one line:
        # json's C encoder only runs without `indent`, and this file is written at every save
        return json.dumps(vars(self), allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        values = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` is saved: `output_dir/checkpoint-{step}`."""
    return Path(output_dir) / f"{PREFIX}-{step}"


def checkpoint_step(path: str | Path) -> int | None:
    match = _CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if checkpoint_step(p) is not None and (p / TRAINER_STATE_NAME).is_file()]
    return sorted(found, key=checkpoint_step)


def find_latest(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def find_latest_usable(output_dir: str | Path) -> Path | None:
    """The latest checkpoint under `output_dir` that a run can resume from, or None.

    A damaged one (see `check_checkpoint`) is skipped with a warning naming it and the one used instead. It is kept
    for the user to look at, never deleted: renamed to `checkpoint-{step}.damaged`, so that it is no longer listed,
    rotated away, taken for the latest again, or overwritten when the resumed run saves its step again.
    """
    skipped: list[tuple[Path, str, Path | None]] = []
    found = None
    for path in reversed(list_checkpoints(output_dir)):
        damage = _damage(path)
        if damage is None:
            found = path
            break
        skipped.append((path, damage, _move_aside(path)))
    for path, damage, aside in skipped:
        kept = f"it is kept, as {aside.name}, for you to look at" if aside else "it is left as it is"
        then = (
            f"resuming from {str(found)!r} instead"
            if found
            else f"no usable checkpoint is left in {str(output_dir)!r}: the run starts from step 0"
        )
        logger.warning("checkpoint %r cannot be resumed from: %s; %s; %s", str(path), damage, kept, then)
    return found


def aside_name(name: str, taken: Callable[[str], bool]) -> str:
    """Where a damaged checkpoint `name` is moved: `{name}.damaged`, or `.damaged-2`, ... where that is `taken`."""
    aside, number = f"{name}{DAMAGED_SUFFIX}", 1
    while taken(aside):
        number += 1
        aside = f"{name}{DAMAGED_SUFFIX}-{number}"
    return aside


def save_checkpoint(
    output_dir: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    state: TrainerState,
    params: dict[str, Any],
    args: dict[str, Any],
    rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Write `output_dir/checkpoint-{step}` atomically and return its path.

    `rng_states` are every process's RNG states (`rng_state()`), by process index, for a data-parallel run: its
    main process writes them all (each resumes from its own); by default this process's."""
    final = checkpoint_path(output_dir, state.global_step)
    tmp = Path(output_dir) / f"{_TEMP_PREFIX}-{state.global_step}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)

        # model weights: safetensors, contiguous CPU copies (shared storage is not allowed by safetensors)
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        save_file(_unshare(weights), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        # optimizer / LR scheduler / grad scaler: plain state dicts of tensors and numbers
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_NAME)
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / SCALER_NAME)
        # every RNG the run draws from, each process's
        for index, rng in enumerate(rng_states or [rng_state()]):
            torch.save(rng, tmp / rng_state_name(index))
        # JSON last: trainer_state.json marks a directory as complete in list_checkpoints
        (tmp / PARAMS_NAME).write_text(json.dumps(params, indent=2, sort_keys=True, default=str))
        (tmp / ARGS_NAME).write_text(json.dumps(args, indent=2, sort_keys=True, default=str))
        (tmp / TRAINER_STATE_NAME).write_text(state.to_json())

        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)  # the partial copy: its space back, and never taken for a checkpoint
        raise StorageError(_cannot_write(final, exc)) from exc
    logger.debug("saved %s (%s)", final, ", ".join(sorted(p.name for p in final.iterdir())))
    return final


def remove_partial_checkpoints(output_dir: str | Path) -> None:
    """Delete the temporary directories of saves that were killed halfway (never a complete checkpoint)."""
    root = Path(output_dir)
    if root.is_dir():
        for path in [*root.glob(f"{_TEMP_PREFIX}-*"), *root.glob(f"{_ROTATED_PREFIX}-*")]:
            shutil.rmtree(path, ignore_errors=True)


def remove_run(output_dir: str | Path) -> None:
    """Delete what a run left in `output_dir`: its checkpoints (complete, damaged or partial) and its final model
    in exportable form. Anything else there stays."""
    from tunetrain.storage.layout import CARD_NAME, EXPERIMENT_NAME, EXPORT_MARKER, METRICS_NAME

    root = Path(output_dir)
    for path in [
        *root.glob(f"{CHECKPOINT_PREFIX}-*"),
        *root.glob(f"{_TEMP_PREFIX}-*"),
        *root.glob(f"{_ROTATED_PREFIX}-*"),
    ]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    names = [WEIGHTS_NAME, PARAMS_NAME, METRICS_NAME, EXPERIMENT_NAME, CARD_NAME]
    try:  # and what its marker says it wrote besides (a Transformers model's config and tokenizer)
        names += [n for n in json.loads((root / EXPORT_MARKER).read_text())["files"] if "/" not in n and n != ".."]
        names.append(EXPORT_MARKER)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for name in names:
        if (root / name).is_file() or (root / name).is_symlink():
            (root / name).unlink()


def _cannot_write(path: Path, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
    try:
        if shutil.disk_usage(path.parent).free < 1 << 20:
            reason = "no space left on the device"
    except OSError:
        pass
    latest = find_latest(path.parent)
    kept = f"the latest complete checkpoint is {latest.name}" if latest else "no complete checkpoint was written"
    return f"cannot write {str(path)!r}: {reason}; {kept}, and the run resumes from it once the storage works again"


def check_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory, or a CheckpointError saying why it cannot be resumed from: missing, incomplete,
    or a file of it damaged (every file is read; the tensors are mapped, not copied)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    damage = _damage(path)
    if damage is not None:
        raise CheckpointError(
            f"{damage}; resume from an earlier checkpoint (resume_from_checkpoint=True, or --resume without a path, "
            "takes the latest usable one), or restore it from a backup"
        )
    return path


def read_trainer_state(path: str | Path) -> TrainerState:
    try:
        return TrainerState.from_json((Path(path) / TRAINER_STATE_NAME).read_text())
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # AttributeError: JSON, but not an object
        raise CheckpointError(f"checkpoint {str(path)!r}: unreadable {TRAINER_STATE_NAME}: {_first_line(exc)}") from exc


def read_params(path: str | Path) -> dict[str, Any]:
    try:
        params = json.loads((Path(path) / PARAMS_NAME).read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
        raise CheckpointError(f"checkpoint {str(path)!r}: unreadable {PARAMS_NAME}: {_first_line(exc)}") from exc
    if not isinstance(params, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: unreadable {PARAMS_NAME}: not a JSON object")
    return params


def read_args(path: str | Path) -> dict[str, Any]:
    """The TrainingArguments the checkpoint's run had, as saved ({} where the checkpoint has none readable)."""
    try:
        args = json.loads((Path(path) / ARGS_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return args if isinstance(args, dict) else {}


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load `model.safetensors` into `model`, naming any key or shape that does not fit."""
    file = Path(path) / WEIGHTS_NAME if Path(path).is_dir() else Path(path)
    try:
        weights = load_file(file)
    except Exception as exc:  # safetensors raises its own SafetensorError for corrupt files, OSError for unreadable
        raise CheckpointError(_weights_unreadable(file, exc)) from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights {str(file)!r} are from a different model: missing {_few(missing)}, unexpected {_few(unexpected)}"
        )
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"weights {str(file)!r} are from a different model: {name!r} has shape "
                f"{tuple(tensor.shape)}, the model expects {tuple(expected[name].shape)}"
            )
    model.load_state_dict(weights)


def load_training_state(
    path: str | Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    device: torch.device,
    process_index: int = 0,
) -> None:
    """Restore optimizer, scheduler, scaler and every RNG from a checkpoint (weights: `load_weights`); the RNG
    states of process `process_index` of a data-parallel run."""
    path = Path(path)
    if device.type == "cpu":  # accelerate's data-parallel CPU processes say cpu:0, which torch.load cannot map to
        device = torch.device("cpu")
    optimizer_state = _load_tensors(path / OPTIMIZER_NAME, map_location=device)
    scheduler_state = _load_tensors(path / SCHEDULER_NAME)
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit this run's optimizer: {exc}") from exc
    if scaler is not None:
        if not (path / SCALER_NAME).is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} has no {SCALER_NAME}, but this run uses fp16")
        scaler.load_state_dict(_load_tensors(path / SCALER_NAME))
    rng_file = path / rng_state_name(process_index)
    if not rng_file.is_file():
        # a checkpoint of a run with fewer processes: this one starts from the main process's RNG states (which
        # every process had at the start: they are all seeded alike), and the run is no longer the one it continues
        logger.warning(
            "checkpoint %s has no RNG states for process %d (it was saved by a run with fewer processes): that "
            "process draws from the main process's", path, process_index,
        )  # fmt: skip
        rng_file = path / RNG_STATE_NAME
    _set_rng_state(_load_tensors(rng_file), path)


def rotate_checkpoints(output_dir: str | Path, *, limit: int | None, keep: str | Path | None) -> list[Path]:
    """Delete the oldest checkpoints beyond `limit`, never `keep` (the best); returns what was deleted."""
    if limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return []
    protected = {Path(keep).name} & {p.name for p in checkpoints} if keep else set()
    others = [p for p in checkpoints if p.name not in protected]
    # the best counts against the limit but survives; the latest survives too (limit 1 may keep two)
    keep_others = limit - len(protected)
    if checkpoints[-1].name not in protected:
        keep_others = max(keep_others, 1)
    doomed = others[: max(len(others) - keep_others, 0)]
    for path in doomed:
        # renamed out of the way first: whoever lists the checkpoints meanwhile (PBT copying a donor's) sees it
        # whole or not at all, never half deleted
        aside = path.with_name(f"{_ROTATED_PREFIX}-{path.name}-{os.getpid()}")
        try:
            path.rename(aside)
        except OSError:
            aside = path
        shutil.rmtree(aside, ignore_errors=True)
        logger.debug("deleted %s (save_total_limit=%s)", path, limit)
    return doomed


def rng_state_name(process_index: int) -> str:
    """The file of one process's RNG states in a checkpoint: the main process's is `rng_state.pt`, as one process's."""
    if process_index == 0:
        return RNG_STATE_NAME
    stem, suffix = RNG_STATE_NAME.rsplit(".", 1)
    return f"{stem}_{process_index}.{suffix}"


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch, CUDA), as a checkpoint holds them."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],  # a tensor: 625 ints pickled at once
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], path: Path) -> None:
    try:
        version, internal, gauss = state["python"]
        if isinstance(internal, torch.Tensor):
            internal = internal.tolist()
        random.setstate((version, tuple(internal), gauss))
        np_state = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": "MT19937",
                "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                "has_gauss": np_state["has_gauss"],
                "gauss": np_state["gauss"],
            }
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
    except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        # exact resume depends on these: a checkpoint whose RNG state cannot be restored is an error
        raise CheckpointError(f"checkpoint {str(path)!r}: RNG state cannot be restored: {exc}") from exc


def _unshare(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in weights.items():
        pointer = tensor.data_ptr()
        out[name] = tensor.clone() if pointer in seen and tensor.numel() else tensor
        seen.setdefault(pointer, name)
    return out


def _damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None: every file is there and reads as a resume
    reads it (the tensors mapped, not copied: the cost of a look at each file's index, not of a second load)."""
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        return f"checkpoint {str(path)!r} is incomplete: missing {', '.join(missing)}"
    try:
        read_trainer_state(path)
        read_params(path)
        _check_weights(path / WEIGHTS_NAME)
        for name in (OPTIMIZER_NAME, SCHEDULER_NAME, RNG_STATE_NAME, SCALER_NAME):
            if name != SCALER_NAME or (path / name).is_file():  # the grad scaler's only with fp16
                # onto the CPU: a checkpoint saved on a GPU (its optimizer state there) is usable on a machine without
                _load_tensors(path / name, map_location="cpu", mmap=True)
    except CheckpointError as exc:
        return str(exc)
    return None


def _check_weights(file: Path) -> None:
    """A CheckpointError unless the safetensors header of `file` parses and its tensors fit in the file."""
    try:
        with safe_open(file, framework="pt"):  # reads the header and checks it against the file's size
            pass
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError for an unreadable file
        raise CheckpointError(_weights_unreadable(file, exc)) from exc


def _weights_unreadable(file: Path, exc: BaseException) -> str:
    return f"weights {str(file)!r} cannot be read: {_first_line(exc)}"


def _load_tensors(file: Path, *, map_location: Any = None, mmap: bool = False) -> Any:
    """A `.pt` file of a checkpoint, loaded without unpickling objects (`weights_only=True`: tensors, numbers,
    strings and containers of them); anything else in it, or a damaged file, is a CheckpointError naming it."""
    # torch.save writes a zip archive (a file cut short loses its index at the end); torch.load would take anything
    # else for a pickle of the old format, and only a zip archive can be mapped
    if not zipfile.is_zipfile(file):
        raise CheckpointError(f"{str(file)!r} is damaged: not the zip archive torch.save writes (cut short?)")
    try:
        return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:  # a global weights_only refuses: an object that could run code as it loads
        raise CheckpointError(
            f"{str(file)!r} holds objects other than tensors and plain values, which tunetrain never unpickles "
            f"(they could run code): {_refused(exc)}"
        ) from exc
    except (RuntimeError, OSError, EOFError, ValueError, KeyError) as exc:  # torch's zip reader: RuntimeError
        raise CheckpointError(f"{str(file)!r} is damaged: {_first_line(exc)}") from exc


def _refused(exc: BaseException) -> str:
    """What torch's weights-only unpickler refused, out of its long message (the line that names the global)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    return next((line for line in lines if line.startswith("WeightsUnpickler error:")), _first_line(exc))


def _move_aside(path: Path) -> Path | None:
    """Rename a damaged checkpoint to a name no checkpoint has; None when it cannot be (another process of the
    run moved it first, a read-only directory): it is then skipped where it is."""
    aside = path.with_name(aside_name(path.name, lambda name: path.with_name(name).exists()))
    try:
        os.rename(path, aside)
    except OSError:
        return None
    return aside


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _few(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")
