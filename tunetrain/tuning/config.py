"""`SearchConfig`: the `search:` section of an experiment file, checked, with its defaults filled in.

```yaml
search:
  backend: ray                 # ray | optuna
  metric: accuracy             # eval_ prefix added; default: train.metric_for_best_model, else loss
  mode: max                    # max | min; default: train.greater_is_better, or from the metric's name
  # several objectives: metric: [accuracy, num_parameters] with mode: [max, min] (a Pareto front)
  num_trials: 64
  max_concurrent_trials: 4
  time_budget_s: 3600          # null: no limit
  sampler: tpe                 # tpe | nsga2 | random | gp | cmaes (needs `pip install cmaes`) | grid
  seed: 0
  scheduler: {type: asha, grace_period: 1, reduction_factor: 3}    # or `asha`, or `none`; in evaluations
  resources_per_trial: {cpu: 1, gpu: 0.25}    # per worker; workers: 2 trains each trial on 2 processes
  storage: runs                # a local or shared directory, or a pyarrow.fs URI such as s3://bucket/runs
  address: auto                # a Ray cluster: auto | host:port; null: a local Ray
  points_to_evaluate: [{learning_rate: 1.0e-3, optim: adamw}]    # known-good params, run first
  max_failures: 2              # retries of a trial that raises, from its last checkpoint
  keep_checkpoints_per_trial: 2
```

`SearchConfig.from_dict` is the way in from a file: every problem in the section, and every conflict with the search
space or the `train:` section, is raised in one ConfigError, each naming its key path. The command line's flags are
merged into the raw mapping first (`with_cli_overrides`), so one code path checks them too. Building a SearchConfig
directly checks each value (but not the space or the TrainingArguments). Nothing here imports optuna, pyarrow, ray
or torch until a sampler or a filesystem is asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunetrain.args import CHANGEABLE_ON_RESUME, field_names
from tunetrain.errors import ConfigError
from tunetrain.formatting import did_you_mean, show_value
from tunetrain.parsing import parse_float, parse_int
from tunetrain.tuning import components
from tunetrain.tuning.components import grid_problem
from tunetrain.tuning.explore import pbt_mutations, with_dependents

if TYPE_CHECKING:
    from tunetrain.args import TrainingArguments
    from tunetrain.space import SearchSpace

# `search.backend` -> "module:class" of its `tunetrain.tuning.backend.Backend`, imported only when chosen (the ray
# backend imports Ray)
BACKENDS = {
    "ray": "tunetrain.tuning.ray.backend:RayBackend",
    "optuna": "tunetrain.tuning.optuna:OptunaBackend",
}
MODES = ("max", "min")
SAMPLERS = tuple(components.SAMPLERS)
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)  # Optuna's CmaEsSampler takes one objective
# what every evaluation reports of its cost, which training does not improve: an objective, never the first
COST_METRICS = ("eval_num_parameters", "eval_runtime", "eval_samples_per_second")
SCHEDULERS = tuple(components.SCHEDULERS)
_MAX_SEED = 2**32 - 1  # numpy's RandomState, which Optuna's samplers seed, takes [0, 2**32 - 1]
_ADDRESS_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_INVALID = object()  # a value that failed its check (the problem is already appended)


@dataclass(frozen=True, kw_only=True)
class SchedulerConfig:
    """When to stop, pause or change a trial, counted in evaluations (each evaluation is one report to Ray Tune /
    Optuna).

    `type`:
    - asha (Ray's ASHAScheduler; Optuna's SuccessiveHalvingPruner on the optuna backend). `grace_period` (default
      1): evaluations before a trial can be stopped. `reduction_factor` (default 3, >= 2): the fraction
      1/reduction_factor of trials that goes on at each rung. `max_t` (default: the run's budget in evaluations, see
      `resolved_max_t`): the last rung; Ray's ASHA also ends every trial there. `promote` (default false; ray
      backend): trials pause at each rung instead of going on, and a paused trial is resumed from its checkpoint
      when it ranks in the top 1/reduction_factor of its rung (ASHA's promotions); the trials left paused at the
      end are pruned.
    - pbt (Population Based Training, ray backend): every `perturbation_interval` evaluations (default 2; none
      before `burn_in_period`, default 0) a trial in the bottom `quantile_fraction` (default 0.25, in (0, 0.5]) of
      the population by its latest evaluation takes the checkpoint of one in the top fraction (exploit) and
      continues from it with that trial's params perturbed (explore): each param of `hyperparam_mutations` is
      resampled from the space with `resample_probability` (default 0.25), else a number is multiplied by 0.8 or
      1.2 (clipped to its range). `hyperparam_mutations`: names of space params a running trial can change
      (default: those of the space that are optimizer settings, `args.CHANGEABLE_ON_RESUME`).
    - none: every trial trains its whole budget.
    """

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3
    max_t: int | None = None
    promote: bool = False
    perturbation_interval: int = 2
    burn_in_period: int = 0
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    hyperparam_mutations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        values = _scheduler_values(_fields_of(self), "search.scheduler", problems)
        _raise_if(problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def resolved_max_t(self, budget_evaluations: int) -> int:
        """`max_t`, or when it is not set the run's budget in evaluations (which the caller computes)."""
        if self.max_t is not None:
            return self.max_t
        if budget_evaluations < 1:
            raise ConfigError(
                "`search.scheduler` is asha, which stops trials between evaluations, but a run has no evaluation"
            )
        if self.grace_period > budget_evaluations:
            raise ConfigError(
                f"`search.scheduler.grace_period` is {self.grace_period}, but a run has only {budget_evaluations} "
                "evaluations (max_t defaults to that): lower it, or evaluate more often"
            )
        return budget_evaluations

    def to_dict(self) -> str | dict[str, Any]:
        """`none`, or the type and the keys that apply to it, as `SearchConfig.from_dict` reads them back."""
        if self.type == "none":
            return "none"
        out: dict[str, Any] = {"type": self.type}
        for name in _SCHEDULER_KEYS[self.type]:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


# the keys of `search.scheduler` that apply to each type (any other must keep its default)
_SCHEDULER_KEYS = {
    "asha": ("grace_period", "reduction_factor", "max_t", "promote"),
    "pbt": ("perturbation_interval", "burn_in_period", "quantile_fraction", "resample_probability",
            "hyperparam_mutations"),
    "none": (),
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one trial reserves on Ray: `workers` processes (>= 1, default 1), each with `cpu` (> 0, default 1) and
    `gpu` (>= 0, default 0).

    A gpu below 1 shares a GPU between trials (0.25: four per GPU); above 1 it must be a whole number. With
    `workers` > 1 the trial trains data-parallel on Ray Train (a worker per process, which may be on several nodes),
    each worker on a GPU of its own when there are GPUs (NCCL runs one process per GPU).
    """

    cpu: float = 1
    gpu: float = 0
    workers: int = 1

    def __post_init__(self) -> None:
        problems: list[str] = []
        values = _resources_values(_fields_of(self), "search.resources_per_trial", problems)
        _raise_if(problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "gpu": self.gpu, "workers": self.workers}


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """The checked `search:` section; build it with `SearchConfig.from_dict(raw, space=..., args=...)`.

    Allowed values and defaults:
    - `backend`: ray (default) | optuna (an in-process study).
    - `metric`: the full metric key (`accuracy` becomes `eval_accuracy`). `mode`: max | min. From a file both are
      always set: by default the TrainingArguments' `objective_metric` and `greater_is_better`; a metric given
      without a mode is minimized when its name ends with loss, runtime, num_parameters, error or latency, else
      maximized. Built directly without a metric, both stay None until `objective(args)` resolves them.
      Several objectives: `metric` a tuple of two or more (a list in a file) and `mode` a tuple of as many; the
      first metric chooses each trial's best checkpoint, and a trial's values are those of that evaluation (see
      `metrics`, `modes`), so it must be one training improves, not a cost (`COST_METRICS`). Not with the cmaes
      sampler, PBT or a pausing ASHA.
    - `num_trials` (>= 1, default 16), `max_concurrent_trials` (>= 1, default 2), `time_budget_s` (> 0, or None
      for no limit).
    - `sampler`: tpe (default) | nsga2 | random | gp | cmaes | grid; see `components.make_sampler`. A grid needs a
      finite space without `when:`; `num_trials` is not capped at the grid size here: Optuna's study stops once the grid
      is exhausted, but under ask-and-tell (Ray) further trials repeat grid points, so the Ray backend caps it.
    - `seed` (in [0, 2**32 - 1], default 0): the sampler's seed.
    - `scheduler`: a `SchedulerConfig`; in a file `asha`, `none` (also `no` / false), null (asha) or a mapping.
    - `resources_per_trial`: a `Resources` (Ray only: the optuna backend runs trials in this process).
    - `storage` (default `runs`): a directory, or a URI with a scheme (s3://, gs://, file://, hdfs://...). Only its
      form is checked here; `tunetrain.storage.resolve_storage` opens it.
    - `address`: a Ray cluster (auto | host:port), or None for a local Ray. Ray only.
    - `points_to_evaluate`: params dicts (partial ones allowed: the rest is sampled), each checked against the space.
    - `max_failures` (>= 0, default 2): retries of a trial that raises. `keep_checkpoints_per_trial` (>= 1,
      default 2: the best and the latest).
    """

    backend: str = "ray"
    metric: str | tuple[str, ...] | None = None
    mode: str | tuple[str, ...] | None = None
    num_trials: int = 16
    max_concurrent_trials: int = 2
    time_budget_s: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources_per_trial: Resources = field(default_factory=Resources)
    storage: str = "runs"
    address: str | None = None
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list, hash=False)
    max_failures: int = 2
    keep_checkpoints_per_trial: int = 2

    def __post_init__(self) -> None:
        problems: list[str] = []
        values = _search_values(_fields_of(self), "search", problems)
        _raise_if(problems)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(
        cls,
        raw: Mapping[str, Any] | None,
        *,
        space: SearchSpace,
        args: TrainingArguments,
        where: str = "search",
        with_run: bool = True,
    ) -> SearchConfig:
        """Check the raw `search:` mapping (None or {} takes every default) against the space and the run's args.

        Besides each value's own rule: the grid sampler needs a finite space without conditions; every point of
        `points_to_evaluate` must fit the space, and there must be no more of them than trials; `address` needs the
        ray backend. With `with_run` (a search is about to run the section), also against the run: a search needs
        evaluations (`train.eval_strategy` not `no`), and a GPU cannot go with `train.use_cpu`. A metric or mode set
        here wins over `train.metric_for_best_model` / `greater_is_better` inside the trials (a trial's objective is
        its best evaluation, so the backends judge "best" by the search's metric).
        """
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"`{where}` is {show_value(raw)}, but must be a mapping with keys {', '.join(_FIELDS)}")
        problems = [
            f"`{where}.{key}` is not a search key{did_you_mean(key, _FIELDS)}" for key in raw if key not in _FIELDS
        ]
        values = _search_values({key: raw[key] for key in _FIELDS if key in raw}, where, problems)
        settings = {**_fields_of(SearchConfig()), **values}
        settings["points_to_evaluate"] = _checked_points(settings["points_to_evaluate"], space, where, problems)
        problems += _conflicts(settings, space, where)
        if with_run:
            problems += _conflicts_with_run(settings, space, args, where)
        _raise_if(problems)
        metric, mode = _objective(settings["metric"], settings["mode"], args)
        return cls(**{**settings, "metric": metric, "mode": mode})

    def objective(self, args: TrainingArguments) -> tuple[Any, Any]:
        """`(metric, mode)`: this config's, or where it has none the TrainingArguments' (as `from_dict` fills in)."""
        return _objective(self.metric, self.mode, args)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objectives' metrics, the first of them the one a trial's best checkpoint is chosen by (a tuple of one
        for a search of one metric). Set: `from_dict` fills the metric in."""
        if self.metric is None:
            raise ValueError("this SearchConfig has no metric yet: objective(args) resolves it")
        return self.metric if isinstance(self.metric, tuple) else (self.metric,)

    @property
    def modes(self) -> tuple[str, ...]:
        """max or min for each of `metrics`."""
        if self.mode is None:
            return tuple(map(_mode_for_metric, self.metrics))
        return self.mode if isinstance(self.mode, tuple) else (self.mode,)

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.metric, tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML values; `SearchConfig.from_dict(config.to_dict(), ...)` gives back an equal config."""
        out = _fields_of(self)
        out.update({key: list(out[key]) for key in ("metric", "mode") if isinstance(out[key], tuple)})
        out["scheduler"] = self.scheduler.to_dict()
        out["resources_per_trial"] = self.resources_per_trial.to_dict()
        out["points_to_evaluate"] = [dict(point) for point in self.points_to_evaluate]
        return out


_FIELDS = tuple(f.name for f in dataclasses.fields(SearchConfig))
_SCHEDULER_FIELDS = tuple(f.name for f in dataclasses.fields(SchedulerConfig))
_SCHEDULER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SchedulerConfig) if f.name != "type"}
_RESOURCE_FIELDS = ("cpu", "gpu", "workers")


def with_cli_overrides(
    raw: Any,
    *,
    backend: str | None = None,
    num_trials: int | None = None,
    address: str | None = None,
    storage: str | None = None,
    gpus_per_trial: float | None = None,
) -> Any:
    """A copy of the raw `search:` mapping with the `tunetrain search` flags set (None leaves a key as it is).

    The flags are not checked here: pass the result to `SearchConfig.from_dict`, whose messages name the keys
    (`--num-trials 0` reads "`search.num_trials` is 0, ..."). `gpus_per_trial` sets `resources_per_trial.gpu`. A raw
    value that is not a mapping comes back as it is, for `from_dict` to report.
    """
    if raw is not None and not isinstance(raw, Mapping):
        return raw
    merged = dict(raw or {})
    flags = {"backend": backend, "num_trials": num_trials, "address": address, "storage": storage}
    merged.update({key: value for key, value in flags.items() if value is not None})
    if gpus_per_trial is not None:
        resources = merged.get("resources_per_trial")
        if resources is None or isinstance(resources, Mapping):
            merged["resources_per_trial"] = {**(resources or {}), "gpu": gpus_per_trial}
    return merged


# --- checking values --------------------------------------------------------------------------------------------


def _search_values(raw: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """Each value of `raw` (keys of SearchConfig) checked and normalized; `_INVALID` for those that fail."""
    parsers = {
        "backend": lambda value, path: _choice(value, path, problems, tuple(BACKENDS)),
        "metric": lambda value, path: _metric(value, path, problems),
        "mode": lambda value, path: _mode(value, path, problems),
        "num_trials": lambda value, path: _integer(value, path, problems, minimum=1),
        "max_concurrent_trials": lambda value, path: _integer(value, path, problems, minimum=1),
        "time_budget_s": lambda value, path: _time_budget(value, path, problems),
        "sampler": lambda value, path: _sampler(value, path, problems),
        "seed": lambda value, path: _integer(value, path, problems, minimum=0, maximum=_MAX_SEED),
        "scheduler": lambda value, path: _scheduler(value, path, problems),
        "resources_per_trial": lambda value, path: _resources(value, path, problems),
        "storage": lambda value, path: _storage(value, path, problems),
        "address": lambda value, path: _address(value, path, problems),
        "points_to_evaluate": lambda value, path: _points(value, path, problems),
        "max_failures": lambda value, path: _integer(value, path, problems, minimum=0),
        "keep_checkpoints_per_trial": lambda value, path: _integer(value, path, problems, minimum=1),
    }
    values = {key: parsers[key](value, f"{where}.{key}") for key, value in raw.items()}
    metric, mode = values.get("metric"), values.get("mode")
    if metric is _INVALID or mode is _INVALID:
        return values
    if isinstance(mode, tuple) and len(mode) == 1 and not isinstance(metric, tuple):  # [max] with one metric
        values["mode"] = mode = mode[0]
    if isinstance(mode, tuple) and not isinstance(metric, tuple):
        names = "no metric" if metric is None else "one metric"
        problems.append(
            f"`{where}.mode` is a list of {len(mode)}, but `{where}.metric` names {names}: give a list of as many "
            "metrics (several objectives), or one mode"
        )
    elif isinstance(metric, tuple) and mode is not None and not isinstance(mode, tuple):
        problems.append(
            f"`{where}.mode` is {mode!r}, but `{where}.metric` names {len(metric)} metrics: give a mode for each, "
            f"such as [{', '.join(_mode_for_metric(name) for name in metric)}]"
        )
    elif isinstance(metric, tuple) and len(mode or metric) != len(metric):
        problems.append(
            f"`{where}.mode` has {len(mode)} modes, but `{where}.metric` names {len(metric)} metrics: give one mode "
            "for each"
        )
    elif mode is None and metric is not None:
        values["mode"] = tuple(map(_mode_for_metric, metric)) if isinstance(metric, tuple) else _mode_for_metric(metric)
    return values


def _scheduler_values(raw: Mapping[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    count_before = len(problems)
    defaults = _SCHEDULER_DEFAULTS
    given = {key: raw.get(key, defaults[key]) for key in defaults}
    values = {
        "type": _scheduler_type(raw.get("type"), f"{path}.type", problems),
        "grace_period": _integer(given["grace_period"], f"{path}.grace_period", problems, minimum=1),
        "reduction_factor": _number(given["reduction_factor"], f"{path}.reduction_factor", problems, minimum=2),
        "max_t": None if given["max_t"] is None else _integer(given["max_t"], f"{path}.max_t", problems, minimum=1),
        "promote": _boolean(given["promote"], f"{path}.promote", problems),
        "perturbation_interval": _integer(
            given["perturbation_interval"], f"{path}.perturbation_interval", problems, minimum=1
        ),
        "burn_in_period": _integer(given["burn_in_period"], f"{path}.burn_in_period", problems, minimum=0),
        "quantile_fraction": _fraction(
            given["quantile_fraction"], f"{path}.quantile_fraction", problems, high=0.5, low_open=True
        ),
        "resample_probability": _fraction(given["resample_probability"], f"{path}.resample_probability", problems),
        "hyperparam_mutations": _names(given["hyperparam_mutations"], f"{path}.hyperparam_mutations", problems),
    }
    if len(problems) > count_before:
        return values
    kind = values["type"]
    for key, default in defaults.items():
        if key not in _SCHEDULER_KEYS[kind] and values[key] != default:
            owners = " or ".join(name for name, keys in _SCHEDULER_KEYS.items() if key in keys)
            problems.append(f"`{path}.{key}` applies only to the {owners} scheduler, but type is {kind}")
    if kind == "asha" and values["max_t"] is not None and values["grace_period"] > values["max_t"]:
        problems.append(f"`{path}.grace_period` is {values['grace_period']}, but must be <= max_t ({values['max_t']})")
    return values


def _boolean(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, bool):
        return value
    problems.append(f"`{path}` is {show_value(value)}, but must be true or false")
    return _INVALID


def _fraction(value: Any, path: str, problems: list[str], *, high: float = 1.0, low_open: bool = False) -> Any:
    """A number in [0, high] ((0, high] with `low_open`)."""
    rule = f"must be in {'(' if low_open else '['}0, {high:g}]"
    number = _number(value, path, problems, minimum=0, exclusive=low_open, rule=rule)
    if number is not _INVALID and number > high:
        problems.append(f"`{path}` is {show_value(value)}, but {rule}")
        return _INVALID
    return number


def _names(value: Any, path: str, problems: list[str]) -> Any:
    """A list of param names (checked against the space in `_conflicts`), as a tuple."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name for name in value):
        problems.append(f"`{path}` is {show_value(value)}, but must be a list of names of params of the space")
        return _INVALID
    if len(set(value)) != len(value):
        problems.append(f"`{path}` names a param twice: {show_value(list(value))}")
        return _INVALID
    return tuple(value)


def _resources_values(raw: Mapping[str, Any], path: str, problems: list[str]) -> dict[str, Any]:
    cpu = _number(raw.get("cpu", 1), f"{path}.cpu", problems, minimum=0, exclusive=True)
    gpu = _number(raw.get("gpu", 0), f"{path}.gpu", problems, minimum=0)
    workers = _integer(raw.get("workers", 1), f"{path}.workers", problems, minimum=1)
    if gpu is not _INVALID and gpu > 1 and not float(gpu).is_integer():
        problems.append(
            f"`{path}.gpu` is {gpu}, but must be a fraction in (0, 1] (trials share a GPU) or a whole number"
        )
    elif workers is not _INVALID and workers > 1 and gpu is not _INVALID and 0 < gpu < 1:
        problems.append(
            f"`{path}.gpu` is {gpu}, but with workers: {workers} each worker needs a GPU of its own (NCCL cannot run "
            "two processes of a trial on one GPU): use gpu: 1, or workers: 1 to share GPUs between trials"
        )
    return {"cpu": cpu, "gpu": gpu, "workers": workers}


def _scheduler(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, SchedulerConfig):
        return value
    if value is None or value is False or isinstance(value, str):
        kind = _scheduler_type(value, path, problems)
        return _INVALID if kind is _INVALID else SchedulerConfig(type=kind)
    if not isinstance(value, Mapping):
        problems.append(
            f"`{path}` is {show_value(value)}, but must be asha, pbt, none, or a mapping such as "
            "{type: asha, grace_period: 1, reduction_factor: 3}"
        )
        return _INVALID
    return _nested(value, path, problems, _SCHEDULER_FIELDS, "scheduler", _scheduler_values, SchedulerConfig)


def _resources(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, Resources):
        return value
    if value is None:
        return Resources()
    if not isinstance(value, Mapping):
        problems.append(f"`{path}` is {show_value(value)}, but must be a mapping such as {{cpu: 1, gpu: 0.5}}")
        return _INVALID
    return _nested(value, path, problems, _RESOURCE_FIELDS, "resource", _resources_values, Resources)


def _nested(
    value: Mapping[Any, Any],
    path: str,
    problems: list[str],
    keys: tuple[str, ...],
    noun: str,
    parse: Callable[[Mapping[str, Any], str, list[str]], dict[str, Any]],
    cls: type,
) -> Any:
    """A nested mapping checked key by key, then built (its constructor's own check cannot fail by then)."""
    count_before = len(problems)
    problems += [f"`{path}.{key}` is not a {noun} key{did_you_mean(key, keys)}" for key in value if key not in keys]
    values = parse(value, path, problems)
    return _INVALID if len(problems) > count_before else cls(**values)


def _scheduler_type(value: Any, path: str, problems: list[str]) -> Any:
    if value is None:
        return "asha"
    if value is False:  # YAML 1.1 reads a bare `no` (and `false`, `off`) as false
        return "none"
    if value in ("hyperband", "sha", "successive_halving"):
        problems.append(
            f"`{path}` is {value!r}: successive halving that pauses trials at rungs and resumes the best is "
            "{type: asha, promote: true} (asynchronous, with ASHA's promotions; Ray's synchronous HyperBand brackets "
            "are not offered)"
        )
        return _INVALID
    return _choice(value, path, problems, SCHEDULERS)


def _sampler(value: Any, path: str, problems: list[str]) -> Any:
    sampler = _choice(value, path, problems, SAMPLERS)
    for package in components.SAMPLER_PACKAGES.get(sampler, ()):
        if importlib.util.find_spec(package) is None:
            problems.append(f"`{path}` is {sampler!r}, which needs the `{package}` package: pip install {package}")
            return _INVALID
    return sampler


def _metric(value: Any, path: str, problems: list[str]) -> Any:
    """One metric (a str), or a list of two or more (several objectives: a tuple); the eval_ prefix added."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) == 1:  # a list of one is the search of one metric
            return _one_metric(value[0], f"{path}[0]", problems)
        if not value:
            problems.append(f"`{path}` is an empty list, but must name at least one evaluation metric")
            return _INVALID
        names = [_one_metric(item, f"{path}[{index}]", problems) for index, item in enumerate(value)]
        if _INVALID in names:
            return _INVALID
        if len(set(names)) != len(names):
            problems.append(f"`{path}` names a metric twice: {show_value(list(value))}")
            return _INVALID
        return tuple(names)
    return _one_metric(value, path, problems)


def _one_metric(value: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"`{path}` is {show_value(value)}, but must name an evaluation metric such as accuracy")
        return _INVALID
    return value if value.startswith("eval_") else f"eval_{value}"


def _mode(value: Any, path: str, problems: list[str]) -> Any:
    """max or min, or a list of them (a tuple; a list of one is one mode)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            problems.append(f"`{path}` is an empty list, but must be max or min, or a list of them")
            return _INVALID
        modes = tuple(_choice(item, f"{path}[{index}]", problems, MODES) for index, item in enumerate(value))
        return _INVALID if _INVALID in modes else modes
    return _choice(value, path, problems, MODES)


def _time_budget(value: Any, path: str, problems: list[str]) -> Any:
    if value is None:
        return None
    return _number(value, path, problems, minimum=0, exclusive=True, rule="must be > 0 (seconds), or null")


def _storage(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"`{path}` is {show_value(value)}, but must be a directory or a URI such as s3://bucket/runs")
        return _INVALID
    return value


def _address(value: Any, path: str, problems: list[str]) -> Any:
    if value is None or value == "auto":
        return value
    if isinstance(value, str) and value.startswith("ray://"):
        # a Ray Client driver runs the Tuner on the head node, where neither the key that seals Ray's state nor
        # the driver's own copy of a trial's error is (and the client extra, grpcio, is not installed)
        problems.append(
            f"`{path}` is {show_value(value)}, but Ray Client (ray://) is not supported: run tunetrain search on a "
            "node of the cluster, with --address HOST:PORT (the GCS port) or auto"
        )
        return _INVALID
    match = _ADDRESS_RE.match(value) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(1)) <= 65535:
        problems.append(f"`{path}` is {show_value(value)}, but must be auto or host:port (a Ray cluster)")
        return _INVALID
    return value


def _points(value: Any, path: str, problems: list[str]) -> Any:
    """The list's form only (a list of mappings); the values are checked against the space in `from_dict`."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        problems.append(f"`{path}` is {show_value(value)}, but must be a list of params mappings")
        return _INVALID
    count_before = len(problems)
    for index, point in enumerate(value):
        if not isinstance(point, Mapping):
            problems.append(f"`{path}[{index}]` is {show_value(point)}, but must be a mapping of param name -> value")
    return _INVALID if len(problems) > count_before else [dict(point) for point in value]


def _choice(value: Any, path: str, problems: list[str], choices: tuple[str, ...]) -> Any:
    if isinstance(value, str) and value in choices:
        return value
    problems.append(
        f"`{path}` is {show_value(value)}, but must be one of {' | '.join(choices)}{did_you_mean(value, choices)}"
    )
    return _INVALID


def _integer(value: Any, path: str, problems: list[str], *, minimum: int, maximum: int | None = None) -> Any:
    number = parse_int(value)
    if number is None:
        problems.append(f"`{path}` is {show_value(value)}, but must be an integer")
    elif number < minimum:
        problems.append(f"`{path}` is {show_value(value)}, but must be >= {minimum}")
    elif maximum is not None and number > maximum:
        problems.append(f"`{path}` is {show_value(value)}, but must be <= {maximum}")
    else:
        return number
    return _INVALID


def _number(
    value: Any, path: str, problems: list[str], *, minimum: float, exclusive: bool = False, rule: str | None = None
) -> Any:
    """An int stays an int, a float (or a numeric string: YAML 1.1 reads `1e3` as one) becomes a float."""
    number = parse_float(value, strings=True, keep_ints=True)
    if number is None:
        problems.append(f"`{path}` is {show_value(value)}, but must be a number")
    elif parse_float(value, strings=True, finite=True) is None:  # NaN, an infinity, or an int past the float range
        problems.append(f"`{path}` is {show_value(value)}, but must be a finite number")
    elif number < minimum or (exclusive and number == minimum):
        rule = rule or f"must be {'>' if exclusive else '>='} {minimum}"
        problems.append(f"`{path}` is {show_value(value)}, but {rule}")
    else:
        return number
    return _INVALID


# --- checks against the space and the run -----------------------------------------------------------------------


def _checked_points(points: Any, space: SearchSpace, where: str, problems: list[str]) -> Any:
    if points is _INVALID:
        return points
    checked = []
    for index, point in enumerate(points):
        try:
            checked.append(space.validate(point, where=f"{where}.points_to_evaluate[{index}]"))
        except ConfigError as exc:
            problems.append(str(exc))
    return checked if len(checked) == len(points) else _INVALID


def _conflicts(settings: Mapping[str, Any], space: SearchSpace, where: str) -> list[str]:
    """What the section gets wrong in itself or with the space; a value that failed its own check is not used."""
    valid = {key: value for key, value in settings.items() if value is not _INVALID}
    problems = []
    if valid.get("sampler") == "grid" and (problem := grid_problem(space, where)) is not None:
        problems.append(problem)
    points, num_trials = valid.get("points_to_evaluate"), valid.get("num_trials")
    if points is not None and num_trials is not None and len(points) > num_trials:
        problems.append(
            f"`{where}.points_to_evaluate` has {len(points)} points, but num_trials is {num_trials} (a trial each)"
        )
    if valid.get("address") is not None and valid.get("backend") == "optuna":
        problems.append(f"`{where}.address` names a Ray cluster, but the backend is optuna (in-process): drop one")
    scheduler = valid.get("scheduler")
    if scheduler is not None:
        problems += _scheduler_conflicts(scheduler, valid, space, where)
    metric = valid.get("metric")
    if isinstance(metric, tuple):
        problems += _multi_objective_conflicts(len(metric), valid, where)
    resources = valid.get("resources_per_trial")
    if resources is not None and resources.workers > 1 and valid.get("backend") == "optuna":
        problems.append(
            f"`{where}.resources_per_trial.workers` is {resources.workers}, but the optuna backend trains each trial "
            "in this process: use backend: ray (Ray Train runs the workers), or workers: 1"
        )
    return problems


def _scheduler_conflicts(
    scheduler: SchedulerConfig, valid: Mapping[str, Any], space: SearchSpace, where: str
) -> list[str]:
    """What a scheduler that pauses or changes trials gets wrong with the backend, the workers or the space."""
    path = f"{where}.scheduler"
    if scheduler.type == "pbt":
        what, key = "moves checkpoints between trials and changes their params as they train", f"{path}.type` is pbt"
    elif scheduler.type == "asha" and scheduler.promote:
        what, key = "pauses trials and resumes them from their checkpoints", f"{path}.promote` is true"
    else:
        return []
    problems = []
    if valid.get("backend") == "optuna":
        problems.append(f"`{key}, which {what}: only the ray backend does that (use backend: ray)")
    resources = valid.get("resources_per_trial")
    if resources is not None and resources.workers > 1:
        problems.append(
            f"`{key}, which {what}, but `{where}.resources_per_trial.workers` is {resources.workers}: a data-parallel "
            "trial cannot be paused or moved yet; use workers: 1"
        )
    if scheduler.type == "pbt":
        problems += _mutation_problems(scheduler, space, f"{path}.hyperparam_mutations")
    return problems


def _multi_objective_conflicts(count: int, valid: Mapping[str, Any], where: str) -> list[str]:
    """What cannot judge trials on several objectives: a sampler of one objective, PBT and the pausing ASHA (they
    rank one number)."""
    problems = []
    first = valid["metric"][0]
    if first in COST_METRICS:
        problems.append(
            f"`{where}.metric[0]` is {first}, but the first objective chooses each trial's best checkpoint (and the "
            "evaluation whose values the trial keeps), and training does not improve it: put a metric training "
            "improves first, such as [accuracy, " + first.removeprefix("eval_") + "]"
        )
    head = f"`{where}.metric` names {count} metrics (several objectives)"
    if valid.get("sampler") in SINGLE_OBJECTIVE_SAMPLERS:
        problems.append(
            f"{head}, but `{where}.sampler` is {valid['sampler']!r}, which optimizes one: use tpe, nsga2, random, gp "
            "or grid"
        )
    scheduler = valid.get("scheduler")
    if scheduler is not None and (scheduler.type == "pbt" or scheduler.promote):
        kind = "pbt" if scheduler.type == "pbt" else "asha with promote: true"
        problems.append(
            f"{head}, but `{where}.scheduler` is {kind}, which ranks trials by one: use asha (it stops trials on "
            "their Pareto rank at each rung) or none"
        )
    return problems


def _mutation_problems(scheduler: SchedulerConfig, space: SearchSpace, path: str) -> list[str]:
    """Each mutated param must be a param of the space that a trial resumed from its checkpoint can take: an
    optimizer setting (a model param is checked against the model's shape when the search starts)."""
    names = pbt_mutations(scheduler, space)
    if not names:
        return [
            f"`{path}` is empty, and the space has no param PBT can change by default "
            f"({', '.join(CHANGEABLE_ON_RESUME)}): name the params to perturb"
        ]
    problems = []
    for name in with_dependents(names, space):
        if name not in space:
            hint = did_you_mean(name, space.names)
            problems.append(f"`{path}` names {name!r}, which is not a param of the space{hint}")
        elif name in field_names() and name not in CHANGEABLE_ON_RESUME:
            named = f"names {name!r}" if name in names else f"changes {name!r} (its `when:` names a mutated param)"
            problems.append(
                f"`{path}` {named}, which a trial cannot change as it trains (it changes the batches, the schedule's "
                f"length or the optimizer's kind): PBT can change {', '.join(CHANGEABLE_ON_RESUME)} and model params "
                "that keep the model's shape"
            )
    return problems


def _conflicts_with_run(
    settings: Mapping[str, Any], space: SearchSpace, args: TrainingArguments, where: str
) -> list[str]:
    """What running the section's search would get wrong with the run's TrainingArguments."""
    problems = []
    resources = settings.get("resources_per_trial")
    if resources is _INVALID:
        resources = None
    if resources is not None and resources.gpu > 0 and args.use_cpu and "use_cpu" not in space:
        problems.append(f"`{where}.resources_per_trial.gpu` is {resources.gpu}, but `train.use_cpu` is true")
    if args.eval_strategy == "no" and "eval_strategy" not in space:
        problems.append(
            f"`{where}` judges trials by their evaluations, but `train.eval_strategy` is 'no': set it to epoch or steps"
        )
    if args.eval_on_start:  # it would count as each trial's first evaluation where a resumed trial counts them
        problems.append(
            f"`{where}` judges trials by their own evaluations, but `train.eval_on_start` is true: a look at the "
            "untrained model is no evaluation of a trial; set it false for the search"
        )
    return problems


def _objective(metric: Any, mode: Any, args: TrainingArguments) -> tuple[Any, Any]:
    if isinstance(metric, tuple):
        return metric, mode or tuple(map(_mode_for_metric, metric))
    if metric is not None:
        return metric, mode or _mode_for_metric(metric)
    return args.objective_metric, mode or ("max" if args.greater_is_better else "min")


def _mode_for_metric(metric: str) -> str:
    """What a metric without a mode is taken to want: a loss, a runtime or a size smaller, anything else larger."""
    return "min" if metric.endswith(_MINIMIZED_SUFFIXES) else "max"


# metrics minimized unless a mode says otherwise (the built-in `num_parameters` and `runtime` among them)
_MINIMIZED_SUFFIXES = ("loss", "runtime", "num_parameters", "error", "latency")


# --- messages ---------------------------------------------------------------------------------------------------


def _fields_of(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(instance)}


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))
