"""`SearchSpace`: the `space:` mapping of an experiment file, parsed, checked, and sampled.

```yaml
space:
  learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true}
  dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
  layers: {type: int, low: 1, high: 4, default: 2}
  optim: {type: categorical, choices: [adamw, sgd]}
  momentum: {type: float, low: 0.5, high: 0.99, when: {optim: sgd}}   # only sampled when optim is sgd
```

Every mistake in the mapping is found at parse time and all of them are raised together as one `ConfigError`,
each naming its key path. A space samples from anything with Optuna's `suggest_float` / `suggest_int` /
`suggest_categorical` (an `optuna.Trial`, a `FixedTrial`, Ray Tune's OptunaSearch define-by-run hook), checks a
plain dict of params (`validate`), and gives a full set of starting values (`defaults`) or a grid for Optuna's
`GridSampler` (`grid`). Optuna is imported only where a distribution object is asked for.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tunetrain.errors import ConfigError
from tunetrain.formatting import did_you_mean, show_value
from tunetrain.parsing import parse_float, parse_int

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

TYPES = ("float", "int", "categorical")
_COMMON_KEYS = ("type", "default", "when")
_KEYS = {
    "float": (*_COMMON_KEYS, "low", "high", "log", "step"),
    "int": (*_COMMON_KEYS, "low", "high", "log", "step"),
    "categorical": (*_COMMON_KEYS, "choices"),
}
_ALL_KEYS = tuple(dict.fromkeys(key for keys in _KEYS.values() for key in keys))
# note: a grid is materialized as Python lists (and Optuna's GridSampler builds their product), so a typo such
# as `step: 1.0e-9` must fail here instead of exhausting memory.
MAX_GRID_VALUES = 100_000
# A float counts as on its step grid when (value - low) / step is this close (relative) to a whole number.
_STEP_TOLERANCE = 1e-9
# A float has 53 bits of mantissa: a finer grid than this has points it cannot tell apart (and Optuna's decimal
# arithmetic on the grid fails past 1e28 steps).
MAX_FLOAT_STEPS = 10**15


class _NoDefault:
    """The type of `NO_DEFAULT`: a param without a `default:` key (None is a valid categorical choice)."""

    def __repr__(self) -> str:
        return "NO_DEFAULT"

    def __reduce__(self) -> str:
        return "NO_DEFAULT"  # pickles (Ray ships the space to workers) and copies as the one module global


NO_DEFAULT = _NoDefault()


@dataclass(frozen=True, kw_only=True)
class FloatParam:
    """A float in [low, high]; `log` samples on a log scale (low > 0), `step` on the grid low + k * step."""

    kind: ClassVar[str] = "float"
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    default: Any = NO_DEFAULT
    when: dict[str, tuple[Any, ...]] | None = field(default=None, hash=False)

    @property
    def has_default(self) -> bool:
        """Whether the file gave a `default:` (which may be None for a categorical)."""
        return self.default is not NO_DEFAULT

    def suggest(self, trial: Any) -> float:
        """Sample this param from an Optuna trial (or anything with `suggest_float`)."""
        return trial.suggest_float(self.name, self.low, self._grid_high(), log=self.log, step=self.step)

    def check(self, value: Any) -> tuple[Any, str | None]:
        """`(value as a float, None)`, or `(value, rule it breaks)` for a message "`x` is V, but RULE"."""
        number = parse_float(value, strings=True)
        if number is None:
            return value, f"must be a number, not {type(value).__name__}"
        if not math.isfinite(number):
            return value, "must be a finite number"
        if not self.low <= number <= self.high:
            return value, f"must be in [{self.low}, {self.high}]"
        if self.step is not None and not _is_on_grid(number, self.low, self.step):
            return value, f"must be on the step grid {self.low} + k * {self.step} (k a whole number)"
        return number, None

    def midpoint(self) -> float:
        """The middle of the range: the geometric mean on a log scale, snapped to the step grid if any."""
        if self.log:
            return self._snapped(math.exp((math.log(self.low) + math.log(self.high)) / 2))
        return self._snapped(self.low / 2 + self.high / 2)  # halves first: low + high can overflow

    def nearest(self, value: float) -> float:
        """The value of the range (and of the step grid, if any) nearest to `value`."""
        return self._snapped(value)

    def _snapped(self, middle: float) -> float:
        middle = min(max(middle, self.low), self.high)
        if self.step is None:
            return middle
        return _snap_float(middle, self.low, self.high, self.step)

    def grid_size(self) -> int | None:
        """How many values the step grid has, or None for a continuous param."""
        return None if self.step is None else _float_grid_size(self.low, self.high, self.step)

    def grid_values(self) -> list[float]:
        """Every value on the step grid (a param with a step only)."""
        return [_float_grid_point(self.low, self.step, k) for k in range(self.grid_size() or 0)]

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution `suggest` samples from (imports optuna)."""
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self._grid_high(), log=self.log, step=self.step)

    def _grid_high(self) -> float:
        # Optuna lowers a high that is off the step grid itself, but warns on every suggest; do it once here.
        if self.step is None or _float_is_on_grid(self.high, self.low, self.step):
            return self.high
        return _float_grid_point(self.low, self.step, self.grid_size() - 1)

    def to_dict(self) -> dict[str, Any]:
        """The normalized spec, as `SearchSpace.from_mapping` reads it back."""
        spec: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return _with_common_keys(self, spec)


@dataclass(frozen=True, kw_only=True)
class IntParam:
    """An integer in [low, high]; `log` samples on a log scale (low >= 1), `step` on the grid low + k * step."""

    kind: ClassVar[str] = "int"
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1
    default: Any = NO_DEFAULT
    when: dict[str, tuple[Any, ...]] | None = field(default=None, hash=False)

    @property
    def has_default(self) -> bool:
        """Whether the file gave a `default:` (which may be None for a categorical)."""
        return self.default is not NO_DEFAULT

    def suggest(self, trial: Any) -> int:
        """Sample this param from an Optuna trial (or anything with `suggest_int`)."""
        return trial.suggest_int(self.name, self.low, self._grid_high(), step=self.step, log=self.log)

    def check(self, value: Any) -> tuple[Any, str | None]:
        """`(value as an int, None)`, or `(value, rule it breaks)` for a message "`x` is V, but RULE"."""
        number = parse_int(value, strings=True)
        if number is None:
            return value, f"must be an integer, not {type(value).__name__}"
        if not self.low <= number <= self.high:
            return value, f"must be in [{self.low}, {self.high}]"
        if (number - self.low) % self.step != 0:
            return value, f"must be on the step grid {self.low} + k * {self.step} (k a whole number)"
        return number, None

    def midpoint(self) -> int:
        """The middle of the range (the geometric one on a log scale), rounded onto the step grid."""
        middle = _nearest_integer_sqrt(self.low * self.high) if self.log else (self.low + self.high) // 2
        steps = min((middle - self.low + self.step // 2) // self.step, (self.high - self.low) // self.step)
        return self.low + steps * self.step

    def nearest(self, value: float) -> int:
        """The value of the range and the step grid nearest to `value`."""
        steps = round((min(max(value, self.low), self.high) - self.low) / self.step)
        return self.low + min(steps, (self._grid_high() - self.low) // self.step) * self.step

    def grid_size(self) -> int:
        """How many values the step grid has."""
        return (self.high - self.low) // self.step + 1

    def grid_values(self) -> list[int]:
        """Every value on the step grid."""
        return list(range(self.low, self.high + 1, self.step))

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution `suggest` samples from (imports optuna)."""
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self._grid_high(), log=self.log, step=self.step)

    def _grid_high(self) -> int:
        # Optuna lowers a high that is off the step grid itself, but warns on every suggest; do it once here.
        return self.high - (self.high - self.low) % self.step

    def to_dict(self) -> dict[str, Any]:
        """The normalized spec, as `SearchSpace.from_mapping` reads it back."""
        spec: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step != 1:
            spec["step"] = self.step
        return _with_common_keys(self, spec)


@dataclass(frozen=True, kw_only=True)
class CategoricalParam:
    """One of a fixed list of scalar choices (str, int, float, bool or None)."""

    kind: ClassVar[str] = "categorical"
    name: str
    choices: tuple[Any, ...]
    default: Any = NO_DEFAULT
    when: dict[str, tuple[Any, ...]] | None = field(default=None, hash=False)

    @property
    def has_default(self) -> bool:
        """Whether the file gave a `default:` (which may be None for a categorical)."""
        return self.default is not NO_DEFAULT

    def suggest(self, trial: Any) -> Any:
        """Sample this param from an Optuna trial (or anything with `suggest_categorical`)."""
        return trial.suggest_categorical(self.name, list(self.choices))

    def check(self, value: Any) -> tuple[Any, str | None]:
        """`(the matching choice, None)`, or `(value, rule it breaks)`; True never matches 1 here."""
        for choice in self.choices:
            if _same_value(value, choice):
                return choice, None
        return value, f"must be one of {_describe_choices(self.choices)}"

    def midpoint(self) -> Any:
        """The first choice: a categorical has no middle."""
        return self.choices[0]

    def grid_size(self) -> int:
        """How many choices there are."""
        return len(self.choices)

    def grid_values(self) -> list[Any]:
        """The choices, in file order."""
        return list(self.choices)

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution `suggest` samples from (imports optuna)."""
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def to_dict(self) -> dict[str, Any]:
        """The normalized spec, as `SearchSpace.from_mapping` reads it back."""
        return _with_common_keys(self, {"type": "categorical", "choices": list(self.choices)})


Param = FloatParam | IntParam | CategoricalParam


class SearchSpace:
    """The params a search varies, in file order; build one with `SearchSpace.from_mapping(experiment["space"])`.

    `len(space)`, `iter(space)` (names), `name in space` and `space[name]` (the parsed param) work as on a dict.
    Params with `when:` are sampled only when their condition holds, after the params the condition names.
    """

    def __init__(self, params: Iterable[Param] = (), *, where: str = "space") -> None:
        params = tuple(params)
        problems = _duplicate_name_problems(params, where)
        problems += _condition_problems(params, {param.name for param in params}, where)
        if problems:
            raise ConfigError("; ".join(problems))
        self._where = where
        self._params = {param.name: param for param in params}
        self._order = _dependency_order(params)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, *, where: str = "space") -> SearchSpace:
        """Parse the `space:` mapping (None or {} is an empty space); every problem is raised in one ConfigError.

        Keys per param: `type` (float | int | categorical, required); `low`, `high` (required for float and
        int); `log` (default false); `step` (default none for float, 1 for int; not with log); `choices` (a
        non-empty list of distinct scalars, categorical only); `default` (a valid value); `when` (a mapping of
        other param name -> value or list of values: the param is active when each named param is active and
        has one of those values).
        """
        if mapping is None:
            return cls((), where=where)
        if not isinstance(mapping, Mapping):
            raise ConfigError(
                f"`{where}` is {show_value(mapping)}, but must be a mapping of param name -> "
                "{type: float | int | categorical, ...}"
            )
        problems: list[str] = []
        params = [
            param for name, spec in mapping.items() if (param := _parse_param(name, spec, where, problems)) is not None
        ]
        known_names = {name for name in mapping if isinstance(name, str)}
        problems += _condition_problems(params, known_names, where)
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(params, where=where)

    # --- the mapping protocol, over names -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._params)

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def __getitem__(self, name: str) -> Param:
        return self._params[name]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return tuple(self._params.values()) == tuple(other._params.values())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()!r})"

    @property
    def names(self) -> list[str]:
        """The param names in file order."""
        return list(self._params)

    @property
    def params(self) -> tuple[Param, ...]:
        """The parsed params in file order."""
        return tuple(self._params.values())

    @property
    def is_empty(self) -> bool:
        """True when the space has no params (no `space:` section, or an empty one)."""
        return not self._params

    # --- sampling -----------------------------------------------------------------------------------------------

    def sample(self, trial: Any) -> dict[str, Any]:
        """Sample every active param from `trial` (an `optuna.Trial`, `FixedTrial`, ...); returns only those.

        Params are suggested parents first, so a conditional param is asked for only when its condition holds.
        """
        chosen: dict[str, Any] = {}
        known = _sampled_already(trial)
        for param in self._order:
            if _is_active(param, chosen):
                chosen[param.name] = known[param.name] if param.name in known else param.suggest(trial)
        return self._in_file_order(chosen)

    def define_by_run(self, trial: Any) -> None:
        """`sample` for Ray Tune's `OptunaSearch(space=space.define_by_run)`, which wants None back."""
        self.sample(trial)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of every param, conditional or not (for `create_trial` / `enqueue_trial`)."""
        return {name: param.distribution() for name, param in self._params.items()}

    def is_active(self, name: str, params: Mapping[str, Any]) -> bool:
        """Whether param `name` is used given the other values in `params` (its own value is not looked at).

        True for a param without `when:`; otherwise every param its condition names must itself be active in
        `params` and have one of the listed values.
        """
        if name not in self._params:
            raise ConfigError(f"`{name}` is not a param of the search space{did_you_mean(name, self._params)}")
        active: dict[str, Any] = {}
        for param in self._order:
            if param.name in params and _is_active(param, active):
                active[param.name] = params[param.name]
        return _is_active(self._params[name], active)

    # --- checking given values ----------------------------------------------------------------------------------

    def validate(
        self, params: Mapping[str, Any], *, require_all: bool = False, where: str = "params"
    ) -> dict[str, Any]:
        """Check a plain dict of param values; returns a normalized copy (float params as float).

        Raises one ConfigError listing every unknown name, wrong type, out-of-range or off-grid value, unknown
        choice, and conditional param given while its condition is false. A missing active param is an error
        only with `require_all=True`. Bools are never numbers; an int given for a float param becomes a float, a
        whole float given for an int param (2.0, as read back from a parquet column) an int, and a numeric string
        a number.
        """
        if not isinstance(params, Mapping):
            raise ConfigError(f"`{where}` is {show_value(params)}, but must be a mapping of param name -> value")
        problems = [
            f"`{where}.{name}` is not a param of the search space{did_you_mean(name, self._params)}"
            for name in params
            if name not in self._params
        ]
        chosen: dict[str, Any] = {}
        undecidable: set[str] = set()  # params whose activity hangs on a value that was itself wrong
        for param in self._order:
            parents = set(param.when or ())
            if parents & undecidable:
                undecidable.add(param.name)
            elif not _is_active(param, chosen):
                if param.name in params:
                    problems.append(f"`{where}.{param.name}` is given, but {_inactive_reason(param, chosen)}")
                    undecidable.add(param.name)  # its children are not blamed for it too
                continue
            if param.name not in params:
                if require_all and param.name not in undecidable:
                    problems.append(f"`{where}.{param.name}` is missing ({_describe_param(param)})")
                continue
            value, rule = param.check(params[param.name])
            if rule is not None:
                problems.append(f"`{where}.{param.name}` is {show_value(value)}, but {rule}")
                undecidable.add(param.name)
            else:
                chosen[param.name] = value
        if problems:
            raise ConfigError("; ".join(problems))
        return self._in_file_order(chosen)

    # --- whole sets of values -----------------------------------------------------------------------------------

    def defaults(self) -> tuple[dict[str, Any], dict[str, str]]:
        """A full set of params and how each was chosen: "default", "midpoint" or "first choice".

        A param's `default:` wins; otherwise floats take the middle of their range (the geometric mean with
        log), ints the rounded middle, both snapped to their step grid, and categoricals their first choice.
        Conditions are evaluated on the values chosen here.
        """
        chosen: dict[str, Any] = {}
        how: dict[str, str] = {}
        for param in self._order:
            if not _is_active(param, chosen):
                continue
            if param.has_default:
                chosen[param.name], how[param.name] = param.default, "default"
            else:
                chosen[param.name] = param.midpoint()
                how[param.name] = "first choice" if param.kind == "categorical" else "midpoint"
        return self._in_file_order(chosen), self._in_file_order(how)

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every param, for `optuna.samplers.GridSampler(space.grid())`.

        Needs a finite set per param (categorical, int, or float with step) and no `when:` conditions; the first
        param that breaks either rule is named in the ConfigError.
        """
        values: dict[str, list[Any]] = {}
        for name, param in self._params.items():
            if param.when is not None:
                raise ConfigError(
                    f"`{self._where}.{name}.when`: the grid sampler does not support conditional params "
                    "(`when:`): drop the condition or use another sampler"
                )
            size = param.grid_size()
            if size is None:
                raise ConfigError(
                    f"`{self._where}.{name}`: the grid sampler needs a finite set of values, but {name} is a "
                    "continuous float (give it a step or make it categorical)"
                )
            if size > MAX_GRID_VALUES:
                raise ConfigError(
                    f"`{self._where}.{name}` has {size} grid values, more than the grid sampler limit of "
                    f"{MAX_GRID_VALUES} (use a larger step)"
                )
            values[name] = param.grid_values()
        return values

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The normalized mapping; `SearchSpace.from_mapping(space.to_dict()) == space`."""
        return {name: param.to_dict() for name, param in self._params.items()}

    def _in_file_order(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {name: values[name] for name in self._params if name in values}


# --- parsing one param ------------------------------------------------------------------------------------------


def _parse_param(name: Any, spec: Any, where: str, problems: list[str]) -> Param | None:
    """The parsed param, or None after appending what is wrong with it to `problems`."""
    if not isinstance(name, str) or not name.isidentifier():
        problems.append(
            f"`{where}` has a param named {show_value(name)}, but names must be identifiers such as learning_rate"
        )
        return None
    path = f"{where}.{name}"
    if not isinstance(spec, Mapping):
        problems.append(
            f"`{path}` is {show_value(spec)}, but must be a mapping such as {{type: float, low: 0.0, high: 1.0}}"
        )
        return None
    kind = _parse_type(spec, path, problems)
    count_before = len(problems)
    _check_keys(spec, kind, path, problems)
    when = _parse_when(spec["when"], f"{path}.when", problems) if "when" in spec else None
    if kind == "float":
        param = _parse_float(name, spec, path, problems)
    elif kind == "int":
        param = _parse_int(name, spec, path, problems)
    elif kind == "categorical":
        param = _parse_categorical(name, spec, path, problems)
    else:
        return None
    if param is None or len(problems) > count_before:
        return None
    param = dataclasses.replace(param, when=when)
    if "default" in spec:
        default, rule = param.check(spec["default"])
        if rule is not None:
            problems.append(f"`{path}.default` is {show_value(spec['default'])}, but {rule}")
            return None
        param = dataclasses.replace(param, default=default)
    return param


def _parse_type(spec: Mapping[Any, Any], path: str, problems: list[str]) -> str | None:
    if "type" not in spec:
        problems.append(f"`{path}.type` is missing (it must be one of {' | '.join(TYPES)})")
        return None
    kind = spec["type"]
    if not isinstance(kind, str) or kind not in TYPES:
        problems.append(
            f"`{path}.type` is {show_value(kind)}, but must be one of {' | '.join(TYPES)}{did_you_mean(kind, TYPES)}"
        )
        return None
    return kind


def _check_keys(spec: Mapping[Any, Any], kind: str | None, path: str, problems: list[str]) -> None:
    for key in spec:
        if key not in _ALL_KEYS:
            choices = _KEYS[kind] if kind else _ALL_KEYS
            problems.append(f"`{path}.{key}` is not a param key{did_you_mean(key, choices)}")
        elif kind is not None and key not in _KEYS[kind]:
            problems.append(f"`{path}.{key}` does not apply to a {kind} param (it takes {', '.join(_KEYS[kind])})")


def _parse_float(name: str, spec: Mapping[Any, Any], path: str, problems: list[str]) -> FloatParam | None:
    low = _required_bound(spec, "low", path, problems, integer=False)
    high = _required_bound(spec, "high", path, problems, integer=False)
    log = _parse_log(spec, path, problems)
    step = _parse_step(spec, path, problems, integer=False)
    if low is None or high is None or log is None or step is False:
        return None
    if not _range_is_valid(low, high, log, step, path, problems):
        return None
    return FloatParam(name=name, low=low, high=high, log=log, step=step)


def _parse_int(name: str, spec: Mapping[Any, Any], path: str, problems: list[str]) -> IntParam | None:
    low = _required_bound(spec, "low", path, problems, integer=True)
    high = _required_bound(spec, "high", path, problems, integer=True)
    log = _parse_log(spec, path, problems)
    step = _parse_step(spec, path, problems, integer=True)
    if low is None or high is None or log is None or step is False:
        return None
    # Optuna accepts log with the default step of 1 for ints, so an explicit `step: 1` is fine there.
    if not _range_is_valid(low, high, log, None if step == 1 else step, path, problems):
        return None
    return IntParam(name=name, low=low, high=high, log=log, step=1 if step is None else step)


def _parse_categorical(name: str, spec: Mapping[Any, Any], path: str, problems: list[str]) -> CategoricalParam | None:
    if "choices" not in spec:
        problems.append(f"`{path}.choices` is missing (a categorical param needs a list of choices)")
        return None
    choices = spec["choices"]
    if not isinstance(choices, (list, tuple)):
        problems.append(f"`{path}.choices` is {show_value(choices)}, but must be a list")
        return None
    if not choices:
        problems.append(f"`{path}.choices` is empty, but must list at least one choice")
        return None
    count_before = len(problems)
    scalars = []
    bad = []
    for index, choice in enumerate(choices):
        problem = _choice_problem(choice)
        if problem is not None:
            bad.append(f"`{path}.choices[{index}]` is {show_value(choice)}, but {problem}")
        else:
            scalars.append(choice)
    problems.extend(bad[:_SHOWN_DUPLICATES])
    if len(bad) > _SHOWN_DUPLICATES:
        problems.append(f"`{path}.choices` has {len(bad) - _SHOWN_DUPLICATES} more such choices")
    # Optuna finds a choice by ==, so 1, 1.0 and True are one choice to it (and one key of a dict: equal scalars
    # hash alike, and NaN was refused above)
    seen: dict[Any, Any] = {}
    repeated = []
    for choice in scalars:
        if choice in seen:
            repeated.append(_duplicate_choice_problem(f"{path}.choices", choice, seen[choice]))
        else:
            seen[choice] = choice
    problems.extend(repeated[:_SHOWN_DUPLICATES])
    if len(repeated) > _SHOWN_DUPLICATES:
        problems.append(f"`{path}.choices` repeats {len(repeated) - _SHOWN_DUPLICATES} more values")
    if len(problems) > count_before:
        return None
    return CategoricalParam(name=name, choices=tuple(choices))


def _sampled_already(trial: Any) -> dict[str, Any]:
    """The values an Optuna trial has sampled so far (a search samples a trial's params, then the Trainer asks for
    them again). Optuna would give the same ones back, after comparing the param's distribution with the one it
    sampled from: for a categorical, choice by choice, which with 10,000 choices cost ~0.02 s a param a trial."""
    optuna = sys.modules.get("optuna")
    if optuna is None or not isinstance(trial, optuna.trial.Trial):
        return {}
    return trial.params


_SHOWN_DUPLICATES = 3  # bad or repeated choices named in an error; the rest are counted


def _choice_problem(choice: Any) -> str | None:
    if choice is not None and not isinstance(choice, (str, int, float, bool)):
        return "must be a scalar (str, int, float, bool or null)"
    if isinstance(choice, float) and math.isnan(choice):
        return "must not be NaN (it is never equal to itself)"
    return None


def _duplicate_choice_problem(path: str, choice: Any, twin: Any) -> str:
    if type(choice) is type(twin):
        return f"`{path}` has {show_value(choice)} twice"
    return (
        f"`{path}` has {show_value(twin)} and {show_value(choice)}, which compare equal (Optuna cannot tell them apart)"
    )


def _required_bound(
    spec: Mapping[Any, Any], key: str, path: str, problems: list[str], *, integer: bool
) -> float | int | None:
    if key not in spec:
        problems.append(f"`{path}.{key}` is missing")
        return None
    return _parse_number(spec[key], f"{path}.{key}", problems, integer=integer)


def _parse_number(value: Any, path: str, problems: list[str], *, integer: bool) -> float | int | None:
    """`value` as an int (integer=True) or a finite float, else None after naming the problem."""
    number = parse_int(value, strings=True) if integer else parse_float(value, strings=True, finite=True)
    if number is not None:
        return number
    if parse_float(value, strings=True) is None:
        problems.append(f"`{path}` is {show_value(value)}, but must be {'an integer' if integer else 'a number'}")
    elif integer:  # 1.5, or an infinity
        problems.append(f"`{path}` is {show_value(value)}, but must be a whole number")
    else:  # NaN or an infinity
        problems.append(f"`{path}` is {show_value(value)}, but must be a finite number")
    return None


def _parse_log(spec: Mapping[Any, Any], path: str, problems: list[str]) -> bool | None:
    log = spec.get("log", False)
    if not isinstance(log, bool):
        problems.append(f"`{path}.log` is {show_value(log)}, but must be true or false")
        return None
    return log


def _parse_step(spec: Mapping[Any, Any], path: str, problems: list[str], *, integer: bool) -> Any:
    """The step, None when not given, or False when it is wrong (the problem appended)."""
    if spec.get("step") is None:
        return None
    step = _parse_number(spec["step"], f"{path}.step", problems, integer=integer)
    if step is None:
        return False
    if step <= 0:
        problems.append(f"`{path}.step` is {show_value(spec['step'])}, but must be > 0")
        return False
    return step


def _range_is_valid(low: float, high: float, log: bool, step: float | None, path: str, problems: list[str]) -> bool:
    count_before = len(problems)
    if low >= high:
        problems.append(f"`{path}.low` is {low}, but must be < high ({high})")
    if log and low <= 0:
        problems.append(f"`{path}.low` is {low}, but must be > 0 when log is true")
    if log and step is not None:
        problems.append(f"`{path}`: log and step cannot be combined (Optuna has no log-scale grid): drop one")
    elif isinstance(step, float) and high / step - low / step > MAX_FLOAT_STEPS:
        problems.append(
            f"`{path}.step` is {step}, but must be at least (high - low) / {MAX_FLOAT_STEPS:.0e} (leave it out for a "
            "continuous float)"
        )
    return len(problems) == count_before


def _parse_when(when: Any, path: str, problems: list[str]) -> dict[str, tuple[Any, ...]] | None:
    """`{parent: (values, ...)}`; the names and values are checked against the other params later."""
    if not isinstance(when, Mapping) or not when:
        problems.append(
            f"`{path}` is {show_value(when)}, but must be a non-empty mapping of param name -> value or list of values"
        )
        return None
    condition: dict[str, tuple[Any, ...]] = {}
    for parent, values in when.items():
        values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
        if not values:
            problems.append(f"`{path}.{parent}` is an empty list, but must name at least one value")
            continue
        for value in values:
            problem = _choice_problem(value)
            if problem is not None:
                problems.append(f"`{path}.{parent}` has {show_value(value)}, but each value {problem}")
        condition[str(parent)] = values
    return condition


# --- checks across params ---------------------------------------------------------------------------------------


def _duplicate_name_problems(params: tuple[Param, ...], where: str) -> list[str]:
    seen: set[str] = set()
    problems = []
    for param in params:
        if param.name in seen:
            problems.append(f"`{where}.{param.name}` is defined twice")
        seen.add(param.name)
    return problems


def _condition_problems(params: Iterable[Param], known_names: set[str], where: str) -> list[str]:
    """What is wrong with the `when:` of each param: unknown or own names, impossible values, cycles."""
    by_name = {param.name: param for param in params}
    problems = []
    for param in by_name.values():
        for parent, values in (param.when or {}).items():
            path = f"{where}.{param.name}.when.{parent}"
            if parent == param.name:
                problems.append(f"`{path}`: a param cannot depend on itself")
            elif parent not in known_names:
                problems.append(f"`{path}` names no param of the space{did_you_mean(parent, sorted(known_names))}")
            elif parent in by_name:
                problems += _condition_value_problems(by_name[parent], values, path)
    problems += [
        f"`{where}`: the `when:` conditions form a cycle ({' -> '.join(cycle)}), so no order samples them"
        for cycle in _find_cycles(by_name)
    ]
    return problems


def _condition_value_problems(parent: Param, values: tuple[Any, ...], path: str) -> list[str]:
    problems = []
    for value in values:
        _, rule = parent.check(value)
        if rule is not None:
            problems.append(
                f"`{path}` is {show_value(value)}, but {parent.name} {rule}, so the condition can never hold"
            )
    return problems


def _find_cycles(by_name: Mapping[str, Param]) -> list[list[str]]:
    """Each cycle of the `when:` graph once, as a path that starts and ends with the same name."""
    parents = {name: [p for p in (param.when or {}) if p in by_name and p != name] for name, param in by_name.items()}
    cycles: list[list[str]] = []
    seen_members: set[frozenset[str]] = set()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = [*path[path.index(name) :], name]
            if frozenset(cycle) not in seen_members:
                seen_members.add(frozenset(cycle))
                cycles.append(cycle)
            return
        if name in done:
            return
        for parent in parents[name]:
            visit(parent, [*path, name])
        done.add(name)

    for name in by_name:
        visit(name, [])
    return cycles


def _dependency_order(params: tuple[Param, ...]) -> list[Param]:
    """The params with every `when:` parent before its children, otherwise in file order (no cycles here)."""
    by_name = {param.name: param for param in params}
    ordered: dict[str, Param] = {}

    def place(param: Param) -> None:
        if param.name in ordered:
            return
        for parent in param.when or ():
            place(by_name[parent])
        ordered[param.name] = param

    for param in params:
        place(param)
    return list(ordered.values())


def _is_active(param: Param, chosen: Mapping[str, Any]) -> bool:
    """True when every param the condition names was chosen with one of the listed values."""
    if param.when is None:
        return True
    return all(
        parent in chosen and any(_same_value(chosen[parent], value) for value in values)
        for parent, values in param.when.items()
    )


def _inactive_reason(param: Param, chosen: Mapping[str, Any]) -> str:
    condition = " and ".join(
        f"{parent} is {' or '.join(repr(value) for value in values)}" for parent, values in (param.when or {}).items()
    )
    actual = ", ".join(
        f"{parent} is {show_value(chosen[parent])}" if parent in chosen else f"{parent} is not set"
        for parent in param.when or {}
    )
    return f"{param.name} is only used when {condition} ({actual})"


# --- numbers and values -----------------------------------------------------------------------------------------


def _same_value(value: Any, choice: Any) -> bool:
    """Equality that keeps bools apart from numbers (True is not 1 here); 1 and 1.0 are the same."""
    if isinstance(value, bool) != isinstance(choice, bool):
        return False
    try:
        return bool(value == choice)
    except Exception:  # an exotic type whose == is not a plain comparison
        return False


def _is_on_grid(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return abs(steps - round(steps)) <= _STEP_TOLERANCE * max(1.0, abs(steps))


# Float grids are computed in decimal on the shortest reprs, as Optuna does, so 0.1 * 3 gives 0.3.
def _float_grid_size(low: float, high: float, step: float) -> int:
    return int((decimal.Decimal(str(high)) - decimal.Decimal(str(low))) // decimal.Decimal(str(step))) + 1


def _float_is_on_grid(value: float, low: float, step: float) -> bool:
    return (decimal.Decimal(str(value)) - decimal.Decimal(str(low))) % decimal.Decimal(str(step)) == 0


def _float_grid_point(low: float, step: float, k: int) -> float:
    return float(decimal.Decimal(str(low)) + k * decimal.Decimal(str(step)))


def _snap_float(value: float, low: float, high: float, step: float) -> float:
    steps = min(max(round((value - low) / step), 0), _float_grid_size(low, high, step) - 1)
    return _float_grid_point(low, step, steps)


def _nearest_integer_sqrt(number: int) -> int:
    root = math.isqrt(number)
    return root + 1 if (root + 1) ** 2 - number < number - root**2 else root


# --- messages ---------------------------------------------------------------------------------------------------


def _describe_choices(choices: Iterable[Any]) -> str:
    return " | ".join(repr(choice) for choice in choices)


def _describe_param(param: Param) -> str:
    if isinstance(param, CategoricalParam):
        return f"one of {_describe_choices(param.choices)}"
    return f"{'an' if param.kind == 'int' else 'a'} {param.kind} in [{param.low}, {param.high}]"


def _with_common_keys(param: Param, spec: dict[str, Any]) -> dict[str, Any]:
    if param.has_default:
        spec["default"] = param.default
    if param.when is not None:
        spec["when"] = {parent: list(values) for parent, values in param.when.items()}
    return spec
