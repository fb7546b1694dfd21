"""The experiment file: one YAML that drives train, search and export.

```yaml
name: mnist1d-cnn
task: tunetrain.tasks.mnist1d:cnn      # "module:attr" or "path/to/file.py:attr"
train: {num_train_epochs: 20, ...}     # fixed TrainingArguments
space: {learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true}, ...}
search: {backend: ray, num_trials: 64, ...}    # checked by every command, `tunetrain train` too
params: {learning_rate: 0.01, ...}       # instead of a space: fixed params (what an export writes)
schedule: [{step: 330, params: {...}}]   # with params: from each step on, other params (a PBT trial's export)
```

Loading checks every section and reports all problems it finds together, each naming its key path. Nothing
here imports torch: a file can be checked without starting a training process.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunetrain.args import TrainingArguments, field_names, field_type
from tunetrain.errors import ConfigError
from tunetrain.formatting import did_you_mean, show_value
from tunetrain.schedule import ScheduleStep, parse_schedule
from tunetrain.space import CategoricalParam, FloatParam, Param, SearchSpace
from tunetrain.tuning.config import SearchConfig

TOP_LEVEL_KEYS = ("name", "task", "train", "params", "schedule", "space", "search")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAX_FILE_BYTES = 1_000_000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment file, every section parsed and checked (build one with `experiment_from_dict` or
    `load_experiment`; change one with `replace`).

    - `train`: the fixed TrainingArguments; `output_dir` defaults to `runs/{name}-train` (a search's experiment
      dir is `runs/{name}`). Relative paths in a file are relative to the file (see `load_experiment`).
    - `space`: what a search varies (empty for a file of fixed `params`). `params`: fixed params. `schedule`: with
      params, the params from given steps on (`tunetrain.schedule`; what the export of a PBT trial writes).
    - `search`: the checked `search:` section, or None when the file has none (a search then takes every default).
    - `sections`: the `train:` and `search:` mappings as given (overrides applied): what `to_dict` writes back, so
      that an export or a search's `search.json` holds the file's own values, not every default.
    """

    name: str
    task: str
    train: TrainingArguments
    space: SearchSpace = field(default_factory=lambda: SearchSpace.from_mapping(None))
    search: SearchConfig | None = None
    params: dict[str, Any] = field(default_factory=dict)
    schedule: tuple[ScheduleStep, ...] = ()
    path: Path | None = None
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds = {"train": TrainingArguments, "space": SearchSpace, "search": (SearchConfig, type(None)), "params": dict}
        for name, kind in kinds.items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise ConfigError(
                    f"`Experiment.{name}` is {show_value(value)}, but must be {_kind_name(kind)} (build an Experiment "
                    "from an experiment file's mapping with experiment_from_dict)"
                )

    def training_arguments(self, **overrides: Any) -> TrainingArguments:
        """The fixed TrainingArguments, with `overrides` (e.g. a run's `output_dir`) applied and checked."""
        return self.train.replace(**overrides) if overrides else self.train

    def search_section(self) -> dict[str, Any]:
        """The raw `search:` mapping (what CLI flags are merged into before it is checked again)."""
        if "search" in self.sections:
            return dict(self.sections["search"])
        return self.search.to_dict() if self.search is not None else {}

    def replace(self, **sections: Any) -> Experiment:
        """A copy with whole sections replaced (`train={...}`, `space={...}`, `search={...}`: raw mappings as in
        the file), checked again like a loaded file."""
        experiment = experiment_from_dict({**self.to_dict(), **sections})
        return dataclasses.replace(experiment, path=self.path)

    def to_dict(self) -> dict[str, Any]:
        train = self.sections.get("train")
        out: dict[str, Any] = {"name": self.name, "task": self.task, "train": dict(train or _changed(self.train))}
        if self.params:
            out["params"] = dict(self.params)
        if self.schedule:
            out["schedule"] = [entry.to_dict() for entry in self.schedule]
        if not self.space.is_empty:
            out["space"] = self.space.to_dict()
        search = self.search_section()
        if search:
            out["search"] = search
        return out


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("None" if k is type(None) else f"a {k.__name__}" for k in kinds)


def _changed(args: TrainingArguments) -> dict[str, Any]:
    """The fields of `args` that differ from TrainingArguments' defaults (its output_dir aside)."""
    defaults = TrainingArguments(output_dir=args.output_dir).to_dict()
    return {k: v for k, v in args.to_dict().items() if k != "output_dir" and v != defaults[k]}


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read, override (`key.path=value`, the value parsed as YAML) and check an experiment file.

    Relative paths in the file (a task file, `train.output_dir`, `train.logging_dir`, `search.storage`) are
    relative to the file's folder, for every command and backend; relative paths given with `--set` are relative
    to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    if path.stat().st_size > _MAX_FILE_BYTES:
        raise ConfigError(f"experiment file {str(path)!r} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"experiment file {str(path)!r} is not UTF-8 text: {exc.reason}") from None
    raw = read_yaml(text, f"experiment file {str(path)!r}")
    # the file's relative paths are relative to the file; those given with --set, to where the command runs
    raw = apply_overrides(resolve_paths(raw, path.resolve().parent), overrides)
    raw = resolve_paths(raw, Path.cwd())
    try:
        experiment = experiment_from_dict(raw)
    except RecursionError:
        raise ConfigError(f"experiment file {str(path)!r} is nested too deeply") from None
    experiment = dataclasses.replace(experiment, path=path)
    return experiment


def resolve_paths(raw: Any, base: Path) -> Any:
    """A copy of a parsed experiment whose relative paths (a task file, `train.output_dir`, `train.logging_dir`,
    a local `search.storage`) are made absolute against `base`; anything else, and anything malformed (which
    `experiment_from_dict` reports), is left as it is."""
    if not isinstance(raw, dict):
        return raw
    raw = copy.copy(raw)
    task = raw.get("task")
    if isinstance(task, str) and task.count(":") == 1:
        module, attr = task.split(":")
        relative = Path(module).expanduser()
        if module.endswith(".py") and not relative.is_absolute():
            if not (base / relative).is_file() and relative.is_file():
                # written before paths were the file's (an older export's experiment.yaml): from the current
                # directory, as then
                logger.warning(
                    "task file %r is not beside the experiment file (%s) but in the current directory: using that "
                    "one (a relative task path is relative to the experiment file)", module, base,
                )  # fmt: skip
                relative = relative.resolve()
            raw["task"] = f"{base / relative}:{attr}"
    for section, keys in (("train", ("output_dir", "logging_dir")), ("search", ("storage",))):
        values = raw.get(section)
        if not isinstance(values, dict):
            continue
        values = raw[section] = dict(values)
        for key in keys:
            value = values.get(key)
            if isinstance(value, str) and value and "://" not in value and not Path(value).expanduser().is_absolute():
                values[key] = str(base / Path(value).expanduser())
    return raw


def read_yaml(text: str, what: str) -> Any:
    """`text` parsed as YAML (safe: plain data only), or a ConfigError naming `what` and where the problem is.

    A key given twice in one mapping is an error (YAML would keep the last silently); nesting deeper than Python
    can follow and numbers too long to convert are errors too, not tracebacks.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (4300)
        raise ConfigError(f"{what} holds a value that cannot be read: {str(exc).split(';')[0]}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding one key twice (merge keys, `<<`, may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {show_value(key)} appears twice (first on line {first + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def apply_overrides(raw: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """A copy of `raw` with each `a.b.c=value` set (the value parsed as YAML, so `3`, `1.0e-3`, `[a, b]` work)."""
    if not overrides:
        return raw
    if not isinstance(raw, dict):
        raise ConfigError("--set needs an experiment file whose top level is a mapping")
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r} must look like section.key=value, e.g. train.num_train_epochs=5")
        if parts[0] not in TOP_LEVEL_KEYS:
            raise ConfigError(f"--set {item!r}: {parts[0]!r} is not a section{did_you_mean(parts[0], TOP_LEVEL_KEYS)}")
        value = read_yaml(text, f"--set {item!r}: the value")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return raw


def experiment_from_dict(raw: Any) -> Experiment:
    """Check a parsed experiment mapping; every problem found is reported in one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an experiment file must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    errors: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            errors.append(f"`{key}` is not an experiment key{did_you_mean(key, TOP_LEVEL_KEYS)}")
    name = _check_name(raw.get("name"), errors)
    task = raw.get("task")
    if not isinstance(task, str) or ":" not in task:
        errors.append(f"`task` is {show_value(task)}, but must be 'pkg.module:attr' or 'path/to/file.py:attr'")
    train_section = _section(raw, "train", errors)
    train = _training_arguments(name, train_section, errors)
    space = None
    try:
        space = SearchSpace.from_mapping(_section(raw, "space", errors) or None)
    except ConfigError as exc:
        errors.append(str(exc))
    search_section = _section(raw, "search", errors)
    params = _section(raw, "params", errors)
    if params and space is not None and not space.is_empty:
        errors.append("`params` and `space` are both given, but params fixes what a space would search: keep one")
    for key in sorted(set(train_section) & set(params)):
        errors.append(f"`train.{key}` is fixed, and `params.{key}` sets it again: keep one")
    errors.extend(_fixed_param_problems(params, train or TrainingArguments()))
    schedule = parse_schedule(raw.get("schedule"), "schedule", errors)
    if schedule and not params:
        errors.append("`schedule` changes the fixed params at given steps, but there is no `params` (those of step 0)")
    for index, entry in enumerate(schedule):
        errors.extend(_fixed_param_problems(entry.params, train or TrainingArguments(), f"schedule[{index}].params"))
        for key in sorted(set(train_section) & set(entry.params)):
            errors.append(f"`train.{key}` is fixed, and `schedule[{index}].params.{key}` sets it again: keep one")
    if space is not None:
        fixed_and_searched = sorted(set(train_section) & set(space.names))
        for key in fixed_and_searched:
            errors.append(f"`train.{key}` is fixed, but `space.{key}` searches it: remove one of them")
        errors.extend(_searched_field_problems(space, train or TrainingArguments()))
    search = None
    if raw.get("search") is not None and train is not None and space is not None:
        try:  # checked against the space (and against the run by `tunetrain search`): once both are known right
            search = SearchConfig.from_dict(search_section, space=space, args=train, with_run=False)
        except ConfigError as exc:
            errors.append(str(exc))
    if errors:
        raise ConfigError("; ".join(errors))
    sections = {"train": train_section, **({"search": search_section} if raw.get("search") is not None else {})}
    return Experiment(
        name=name, task=task, train=train, space=space, search=search, params=params, schedule=schedule,
        sections=sections,
    )  # fmt: skip


# TrainingArguments fields that are not hyperparameters: a search sets them for each trial itself
# (tuning/trial.py), or they say where a run's output goes. Searched, trials would write to one dir, or override
# what the search resumes, prunes and judges them by.
_NOT_HYPERPARAMETERS = {
    "output_dir": "a search gives each trial its own dir (trials given one dir overwrite each other's checkpoints)",
    "logging_dir": "a search gives each trial its own TensorBoard dir",
    "report_to": "it says where a run's logs go, not how it trains",
    "disable_tqdm": "it says how progress is shown, not how a run trains",
    "save_strategy": "a search saves each trial's checkpoint at every evaluation, to resume and prune it from there",
    "save_steps": "a search saves each trial's checkpoint at every evaluation, to resume and prune it from there",
    "save_total_limit": "a search keeps `search.keep_checkpoints_per_trial` checkpoints of each trial",
    "load_best_model_at_end": "a search keeps each trial's best evaluation itself",
    "metric_for_best_model": "a search judges every trial by the one `search.metric`",
    "greater_is_better": "a search judges every trial in the one direction of `search.mode`",
    "label_names": "it names the batch keys that hold the labels, not how a run trains",
    "remove_unused_columns": "it says what the model is given, not how it trains",
    "eval_on_start": "it adds a look at the untrained model, not how a run trains",
}


def _searched_field_problems(space: SearchSpace, train: TrainingArguments) -> list[str]:
    """What is wrong with the space's params that set a TrainingArguments field: a field that is not a
    hyperparameter, or a bound or choice that the field would refuse when a trial starts (one problem a param)."""
    problems = []
    for param in space.params:
        if param.name in _NOT_HYPERPARAMETERS:
            why = _NOT_HYPERPARAMETERS[param.name]
            problems.append(f"`space.{param.name}` is not a hyperparameter: {why}; remove it from the space")
        elif param.name in field_names() and (problem := _field_value_problem(param, train)) is not None:
            problems.append(problem)
    return problems


def _fixed_param_problems(params: dict[str, Any], train: TrainingArguments, where: str = "params") -> list[str]:
    """What is wrong with `params:` values that set a TrainingArguments field: one that is not a hyperparameter
    (it belongs under `train:`), or a value the field refuses (one problem a param)."""
    problems = []
    for name, value in params.items():
        if name in _NOT_HYPERPARAMETERS:
            problems.append(f"`{where}.{name}` is not a hyperparameter: set it under `train:`")
        elif name in field_names():
            try:
                train.check_value(name, value, where=f"{where}.{name}")
            except ConfigError as exc:
                problems.append(str(exc))
    return problems


def _field_value_problem(param: Param, train: TrainingArguments) -> str | None:
    where = f"space.{param.name}"
    if isinstance(param, FloatParam) and field_type(param.name) == "int":  # whole bounds, but it samples 2.7
        return f"`{where}` is a float param, but TrainingArguments.{param.name} is an int: use type: int"
    if isinstance(param, CategoricalParam):
        values = [("choices", choice) for choice in param.choices]
    else:
        values = [("low", param.low), ("high", param.high)]
    for key, value in values:
        try:
            train.check_value(param.name, value, where=f"{where}.{key}")
        except ConfigError as exc:
            return str(exc)
    return None


def _check_name(name: Any, errors: list[str]) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        errors.append(
            f"`name` is {show_value(name)}, but must be 1-128 letters, digits, '_', '.' or '-', starting with a letter "
            "or digit (it names a directory)"
        )
        return ""
    return name


def _section(raw: Mapping[str, Any], key: str, errors: list[str]) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"`{key}` is a {type(value).__name__}, but must be a mapping")
        return {}
    bad_keys = [k for k in value if not isinstance(k, str)]
    if bad_keys:
        errors.append(f"`{key}` has non-string keys {bad_keys[:3]}")
        return {}
    return dict(value)


def _training_arguments(name: str, train: dict[str, Any], errors: list[str]) -> TrainingArguments | None:
    """The `train:` section as TrainingArguments (`output_dir` defaults to `runs/{name}-train`, beside a search's
    `runs/{name}`), or None with its problems
    appended: every unknown key, else the first bad value."""
    unknown = [
        f"`train.{key}` is not a TrainingArguments field{did_you_mean(key, field_names())}"
        for key in train
        if key not in field_names()
    ]
    errors.extend(unknown)
    if unknown:
        return None
    try:
        return TrainingArguments.from_dict({"output_dir": str(Path("runs") / f"{name or 'unnamed'}-train"), **train})
    except ConfigError as exc:
        errors.append(str(exc))
        return None
