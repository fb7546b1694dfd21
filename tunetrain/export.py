"""Taking a trial out of a search: a self-contained folder, and the model loaded back from it.

An export folder holds:
- `model.safetensors`: the weights of the trial's best checkpoint (by the search metric, not its last one),
- `params.json`: the trial's params,
- `metrics.json`: best and last metric, evaluations run, status, the search metric and mode; for a search of several
  objectives each one's value at the exported evaluation (`objectives`), their `modes` and the `pareto` flag,
- `experiment.yaml`: the experiment with its space replaced by the fixed params, so that
  `tunetrain train DIR/experiment.yaml` re-trains the same run; for a trial that PBT exploited, the params of
  step 0 and a `schedule` (the params from each later step: its lineage, back to step 0),
- `README.md`: a short card (task, params, metric, how to load),
- `.tunetrain-export`: the names the export wrote; `--force` empties a dir only when it holds an export and nothing
  else.

Nothing is written or deleted before every check has passed: the export dir is not the experiment dir, inside it or
around it (nor `/` or the home dir), and every trial's weights are a whole safetensors file of the experiment's own.
`load_model(DIR)` rebuilds the model through the task's factory and loads the weights; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors import SafetensorError, safe_open

from tunetrain.args import field_names
from tunetrain.errors import ConfigError
from tunetrain.experiment import load_experiment
from tunetrain.schedule import ScheduleStep
from tunetrain.storage import copy_down, experiment_location, is_file, is_uri
from tunetrain.storage.layout import (
    CARD_NAME,
    EXPERIMENT_NAME,
    EXPORT_MARKER,
    METRICS_NAME,
    PARAMS_NAME,
    TRAINER_STATE_NAME,
    WEIGHTS_NAME,
)
from tunetrain.task import load_task

if TYPE_CHECKING:
    import torch

    from tunetrain.experiment import Experiment
    from tunetrain.results import SearchResult, TrialRecord

MODEL_DIR_FILES = (WEIGHTS_NAME, PARAMS_NAME, METRICS_NAME, EXPERIMENT_NAME, CARD_NAME)
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a file's header


def write_exports(
    out_dir: Path,
    experiment: Experiment,
    result: SearchResult,
    trials: list[TrialRecord],
    *,
    side_by_side: bool,
    force: bool,
    prefix: str = "rank",
) -> list[Path]:
    """Export `trials` into `out_dir` (one trial), or side by side as `out_dir/PREFIX-N-TRIAL` (rank, or pareto for
    a front). The export dir and every trial's weights are checked before anything is deleted or written."""
    check_export_dir(out_dir, result.experiment_dir)
    with tempfile.TemporaryDirectory(prefix="tunetrain-export-") as staging:  # weights from remote storage
        weights = [trial_weights(result, trial, Path(staging)) for trial in trials]
        clear_export_dir(out_dir, force)
        if not side_by_side:
            return [write_export(out_dir, experiment, result, trials[0], weights[0])]
        names = [f"{prefix}-{rank}-{trial.trial_id}" for rank, trial in enumerate(trials, start=1)]
        _write_marker(out_dir, names)
        return [
            write_export(out_dir / name, experiment, result, trial, path)
            for name, trial, path in zip(names, trials, weights, strict=True)
        ]


def write_export(
    out_dir: Path, experiment: Experiment, result: SearchResult, trial: TrialRecord, weights: Path
) -> Path:
    """One trial's export folder (see the module docstring), its `weights` checked by `trial_weights`."""
    metrics = {
        "trial_id": trial.trial_id,
        "metric": result.metric,
        "mode": result.mode,
        "best_metric": trial.best_metric,
        "last_metric": trial.last_metric,
        "best_step": trial.best_step,
        "evaluations": trial.evaluations,
        "status": trial.status,
        "num_processes": trial.num_processes,  # the data-parallel world size it trained with
    }
    if result.multi_objective:  # each objective's value at the exported (best) evaluation, and the front flag
        metrics["objectives"] = dict(zip(result.metrics, trial.objectives or [], strict=False))
        metrics["modes"] = dict(zip(result.metrics, result.modes, strict=True))
        metrics["pareto"] = trial.pareto
    threads = trained_threads(weights.parent)
    if threads:
        metrics["num_threads"] = threads
    start, schedule = trial_schedule(result, trial)
    params = schedule[-1].params if schedule else trial.params
    if schedule and trial.best_step is not None:  # the params in force at the exported weights' step
        params = next((e.params for e in reversed(schedule) if e.step < trial.best_step), start)
    write_model_dir(
        out_dir, experiment, params, metrics, weights=weights, source=trial.best_checkpoint, start=start,
        schedule=schedule,
    )  # fmt: skip
    return out_dir


def trial_schedule(result: SearchResult, trial: TrialRecord) -> tuple[dict[str, Any], tuple[ScheduleStep, ...]]:
    """The params a trial trained with from step 0, and the schedule of its later params: () for a trial never
    exploited by PBT, else its lineage (each segment named by the trial that trained it)."""
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.lineage import read_lineage

    filesystem, path = experiment_location(result.experiment_dir)
    lineage = read_lineage(filesystem, ExperimentDir(filesystem, path, path).trial_path(trial.trial_id))
    if lineage is None:
        return dict(trial.params), ()
    first, *later = lineage.segments
    return dict(first.params), tuple(ScheduleStep(s.step, dict(s.params), s.trial_id) for s in later)


def trial_weights(result: SearchResult, trial: TrialRecord, staging: Path) -> Path:
    """The weights of the trial's best checkpoint, checked (`check_weights`; on a local disk, inside the experiment
    dir too): in the checkpoint itself, or copied down into `staging` from remote storage (s3://...)."""
    missing = ConfigError(f"trial {trial.trial_id!r} has no best checkpoint left to export ({trial.best_checkpoint})")
    if not trial.best_checkpoint:
        raise missing
    checkpoint = _local_path(trial.best_checkpoint)
    if checkpoint is None:  # in the experiment's remote storage: `scheme://` then the path in its filesystem
        filesystem, _ = experiment_location(result.experiment_dir)
        remote = f"{trial.best_checkpoint.split('://', 1)[1]}/{WEIGHTS_NAME}"
        if not is_file(filesystem, remote):
            raise missing
        weights = staging / trial.trial_id / WEIGHTS_NAME
        copy_down(filesystem, remote, weights)
        state = f"{trial.best_checkpoint.split('://', 1)[1]}/{TRAINER_STATE_NAME}"
        if is_file(filesystem, state):  # for the thread count it trained with
            copy_down(filesystem, state, weights.parent / TRAINER_STATE_NAME)
        check_weights(weights, shown=f"{trial.best_checkpoint}/{WEIGHTS_NAME}")
        return weights
    weights = checkpoint / WEIGHTS_NAME
    if not weights.is_file() and not weights.is_symlink():
        raise missing
    check_weights(weights)
    experiment = _local_path(str(result.experiment_dir))
    if experiment is not None and not weights.resolve().is_relative_to(experiment.resolve()):
        raise ConfigError(
            f"the weights {str(weights)!r} are outside the experiment dir {str(experiment)!r} (through a symbolic "
            "link, or results written before they were kept relative to it, in a moved or copied experiment): an "
            "export copies only the experiment's own files"
        )
    return weights


def trained_threads(checkpoint: Path) -> int | None:
    """The torch threads a checkpoint's run trained with (its trainer_state.json), if it says."""
    try:
        threads = json.loads((checkpoint / TRAINER_STATE_NAME).read_text()).get("num_threads")
    except (OSError, ValueError, AttributeError):
        return None
    return threads if isinstance(threads, int) and threads > 0 else None


def check_weights(path: Path, *, shown: str | None = None) -> None:
    """Refuse weights that are a symbolic link or not a whole safetensors file (read the way safetensors reads it:
    an 8-byte little-endian header length, a JSON header, every tensor's data_offsets inside the file)."""
    what = f"the weights {shown or str(path)!r}"
    if path.is_symlink():
        raise ConfigError(
            f"{what} are a symbolic link (to {os.readlink(path)!r}): an export copies only the experiment's own files"
        )
    header, data_bytes = _safetensors_header(path, what)
    if not isinstance(header, dict):
        raise ConfigError(f"{what} are not a safetensors file: its header is not a JSON object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ConfigError(f"{what} are not a safetensors file: tensor {name!r} has no data_offsets")
        if not 0 <= offsets[0] <= offsets[1] <= data_bytes:
            raise ConfigError(
                f"{what} are not a whole safetensors file: tensor {name!r} has data_offsets {offsets} outside its "
                f"{data_bytes} bytes of data"
            )
    try:  # what else safetensors checks (dtypes, shapes against offsets, no gaps) before it loads a tensor
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as exc:
        raise ConfigError(f"{what} are not a safetensors file: {str(exc).splitlines()[0]}") from None


def _safetensors_header(path: Path, what: str) -> tuple[Any, int]:
    """A safetensors file's header (parsed JSON) and the size of the data after it, read without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"{what} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} are not a file")
        if info.st_size < 8:
            raise ConfigError(f"{what} are {info.st_size} bytes: too short for a safetensors file")
        length = int.from_bytes(file.read(8), "little")
        if length > min(info.st_size - 8, MAX_HEADER_BYTES):
            raise ConfigError(
                f"{what} are not a whole safetensors file: its header length ({length} bytes) runs past the end of "
                f"the file ({info.st_size} bytes)"
            )
        try:
            return json.loads(file.read(length)), info.st_size - 8 - length
        except (ValueError, RecursionError):
            raise ConfigError(f"{what} are not a safetensors file: its header is not JSON") from None


def write_model_dir(
    out_dir: Path,
    experiment: Experiment,
    params: dict[str, Any],
    metrics: dict[str, Any],
    *,
    weights: Path,
    source: str,
    model: torch.nn.Module | None = None,
    start: dict[str, Any] | None = None,
    schedule: tuple[ScheduleStep, ...] = (),
) -> None:
    """The exportable form of a model: weights, params (those the weights were trained with last), metrics, a
    re-runnable experiment file and a card; for a Transformers model also its config and tokenizer (`model`, if
    given, is the trained one). A run whose params changed (PBT) gives the params of step 0 (`start`) and the
    `schedule` of the later ones: the experiment file replays it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_marker(out_dir, MODEL_DIR_FILES)  # first: an export cut short is still one that --force replaces
    if weights.resolve() != (out_dir / WEIGHTS_NAME).resolve():
        shutil.copyfile(weights, out_dir / WEIGHTS_NAME)
    (out_dir / PARAMS_NAME).write_text(json.dumps(params, indent=2, sort_keys=True, default=str))
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    fixed = _fixed_experiment(experiment, start if start is not None else params, scheduled=bool(schedule))
    if schedule:
        fixed["schedule"] = [entry.to_dict() for entry in schedule]
    header = f"# tunetrain train {out_dir / EXPERIMENT_NAME}\n# {experiment.name} with fixed params, from {source}\n"
    (out_dir / EXPERIMENT_NAME).write_text(header + yaml.safe_dump(fixed, sort_keys=False))
    (out_dir / CARD_NAME).write_text(_card(experiment, params, metrics, out_dir))
    written = _write_transformers_files(out_dir, experiment, params, model)
    if written:
        _write_marker(out_dir, [*MODEL_DIR_FILES, *written])


def _write_transformers_files(
    out_dir: Path, experiment: Experiment, params: dict[str, Any], model: torch.nn.Module | None
) -> list[str]:
    """For a `transformers.PreTrainedModel`: its config (and generation config) and the task's tokenizer beside the
    weights, so that `AutoModel*.from_pretrained(out_dir)` and `pipeline` load the export; the names written. Other
    models, or no transformers installed: nothing (and transformers is not imported). The model is built from the
    task's factory unless given."""
    import importlib.util
    import sys

    if importlib.util.find_spec("transformers") is None:
        return []
    task = load_task(experiment.task)
    if model is None:
        if task.model_init is None:
            return []
        model = task.model_init({k: v for k, v in params.items() if k not in field_names()})
    transformers = sys.modules.get("transformers")  # imported by the model's own code, if it is one
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return []
    with tempfile.TemporaryDirectory(prefix="tunetrain-hf-") as staging:  # its own names, whatever out_dir holds
        model.config.save_pretrained(staging)
        if model.can_generate() and model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
        if task.processing_class is not None and hasattr(task.processing_class, "save_pretrained"):
            task.processing_class.save_pretrained(staging)
        names = sorted(path.name for path in Path(staging).iterdir() if path.is_file())
        for name in names:
            shutil.move(str(Path(staging) / name), out_dir / name)
    return names


def load_model(model_dir: str | Path) -> torch.nn.Module:
    """The exported model: built by the task's factory with the exported params, weights loaded (no pickle)."""
    from tunetrain import checkpoint as ckpt  # torch

    path = Path(model_dir)
    for name in (WEIGHTS_NAME, PARAMS_NAME, EXPERIMENT_NAME):
        if not (path / name).is_file():
            raise ConfigError(f"{str(path)!r} is not an exported model: it has no {name}")
    experiment = load_experiment(path / EXPERIMENT_NAME)
    params = json.loads((path / PARAMS_NAME).read_text())
    task = load_task(experiment.task)
    if task.model_init is None:
        raise ConfigError(f"task {experiment.task!r} has no model_init, which load_model rebuilds the model with")
    model = task.model_init({k: v for k, v in params.items() if k not in field_names()})
    ckpt.load_weights(model, path / WEIGHTS_NAME)
    model.eval()
    return model


def _fixed_experiment(experiment: Experiment, params: dict[str, Any], *, scheduled: bool = False) -> dict[str, Any]:
    """The experiment as a dict, its space replaced by `params` (TrainingArguments fields go to `train`, unless
    a schedule changes them later: then every param stays in `params`, as in the schedule)."""
    fixed = experiment.to_dict()
    fixed.pop("space", None)
    fixed.pop("search", None)
    fixed.pop("schedule", None)  # the caller's, if the run had one
    fields = set() if scheduled else field_names()
    fixed["train"] = {**fixed.get("train", {}), **{k: v for k, v in params.items() if k in fields}}
    model_params = {k: v for k, v in params.items() if k not in fields}
    if model_params:
        fixed["params"] = model_params
    else:
        fixed.pop("params", None)
    return fixed


def check_export_dir(out_dir: Path, experiment_dir: str | Path) -> None:
    """Refuse an export dir that is the experiment dir, inside it or holds it (symbolic links followed), the root
    dir or the home dir."""
    shown = str(out_dir)
    where = out_dir.resolve()
    if where == Path(where.anchor):
        raise ConfigError(f"export dir {shown!r} is the root dir: an export goes into a dir of its own")
    if where == Path.home().resolve():
        raise ConfigError(f"export dir {shown!r} is the home dir: an export goes into a dir of its own")
    experiment = _local_path(str(experiment_dir))
    if experiment is None:
        return  # in remote storage: no local dir can be it
    experiment = experiment.resolve()
    if where == experiment:
        raise ConfigError(f"export dir {shown!r} is the experiment dir {str(experiment)!r}: export beside it")
    if where.is_relative_to(experiment):
        raise ConfigError(f"export dir {shown!r} is inside the experiment dir {str(experiment)!r}: export beside it")
    if experiment.is_relative_to(where):
        raise ConfigError(f"export dir {shown!r} holds the experiment dir {str(experiment)!r}: export beside it")


def clear_export_dir(path: Path, force: bool) -> Path:
    """`path` made ready for an export: made if missing; with `force`, emptied of an earlier export, but only when
    all it holds is what exports wrote (`EXPORT_MARKER` lists it)."""
    shown = str(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"export dir {shown!r} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()):
        foreign = _not_exported(path)
        if foreign:
            what = f"no {EXPORT_MARKER} in it" if foreign == ["*"] else ", ".join(foreign[:5])
            raise ConfigError(
                f"export dir {shown!r} holds files that no export wrote ({what}): choose another dir (--force "
                "replaces only an earlier export)"
            )
        if not force:
            raise ConfigError(f"export dir {shown!r} exists and is not empty (use --force to replace it)")
        for entry in path.iterdir():  # the dir itself stays (it may be a symbolic link's target)
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _not_exported(path: Path) -> list[str]:
    """What in the dir `path` no export wrote (by its `EXPORT_MARKER`, and theirs for the dirs it lists); ["*"]
    when it has no marker."""
    marker = path / EXPORT_MARKER
    try:
        listed = set(json.loads(marker.read_text())["files"]) if not marker.is_symlink() else None
    except (OSError, ValueError, KeyError, TypeError):  # none there, or not ours
        listed = None
    if listed is None:
        return ["*"]
    foreign = []
    for entry in sorted(path.iterdir()):
        if entry.name == EXPORT_MARKER:
            continue
        if entry.name not in listed or entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_dir():
            foreign += [f"{entry.name}/{name}" for name in _not_exported(entry)]
    return foreign


def _local_path(location: str) -> Path | None:
    """A local path, or a `file://` URI's path; None in remote storage (s3://...)."""
    if not is_uri(location):
        return Path(location)
    scheme, rest = location.split("://", 1)
    return Path(rest.split("?", 1)[0]) if scheme.lower() == "file" else None


def _write_marker(out_dir: Path, names: tuple[str, ...] | list[str]) -> None:
    """Mark `out_dir` as an export of `names` (see `clear_export_dir`)."""
    (out_dir / EXPORT_MARKER).write_text(json.dumps({"files": sorted(names)}) + "\n")


def _card(experiment: Experiment, params: dict[str, Any], metrics: dict[str, Any], out_dir: Path) -> str:
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(params.items()))
    shown = {k: v for k, v in metrics.items() if v is not None}
    metric_rows = "\n".join(f"| {k} | {v} |" for k, v in shown.items())
    return f"""# {experiment.name}

Task: `{experiment.task}`

## Params
| param | value |
|---|---|
{rows}

## Metrics
| | |
|---|---|
{metric_rows}

## Use
```python
import tunetrain
model = tunetrain.load_model("{out_dir}")   # the task's model with these weights, in eval mode
```
Re-train the same run: `tunetrain train {out_dir / EXPERIMENT_NAME}`; a final fit on train + eval data with a
longer budget: `tunetrain train {out_dir} --full-data --set train.num_train_epochs=N`.
"""
