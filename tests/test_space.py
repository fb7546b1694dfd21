"""Unit tests for `tunetrain.space.SearchSpace`: parsing, sampling with Optuna, validate, defaults, grid."""

from __future__ import annotations

import ast
import copy
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunetrain.errors import ConfigError
from tunetrain.space import NO_DEFAULT, CategoricalParam, FloatParam, IntParam, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent

EXAMPLE_YAML = """
space:
  learning_rate: {type: float, low: 1.0e-4, high: 0.1, log: true}
  weight_decay: {type: float, low: 0.0, high: 0.1}
  dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
  channels: {type: int, low: 16, high: 128, log: true}
  layers: {type: int, low: 1, high: 4, step: 1, default: 2}
  optim: {type: categorical, choices: [adamw, sgd]}
  momentum: {type: float, low: 0.5, high: 0.99, when: {optim: sgd}}   # conditional
"""


def _example() -> SearchSpace:
    return SearchSpace.from_mapping(yaml.safe_load(EXAMPLE_YAML)["space"])


def _space(**params: dict) -> SearchSpace:
    return SearchSpace.from_mapping(params)


def _problems(mapping: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        SearchSpace.from_mapping(mapping)
    return str(info.value).split("; ")


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


# --- parsing ------------------------------------------------------------------------------------------------------


def test_example_parses_into_frozen_params():
    space = _example()
    assert space.names == ["learning_rate", "weight_decay", "dropout", "channels", "layers", "optim", "momentum"]
    assert len(space) == 7 and list(space) == space.names
    assert "momentum" in space and "lr" not in space and not space.is_empty
    assert space["learning_rate"] == FloatParam(name="learning_rate", low=1e-4, high=0.1, log=True)
    assert space["channels"] == IntParam(name="channels", low=16, high=128, log=True)
    assert space["layers"] == IntParam(name="layers", low=1, high=4, default=2)
    assert space["optim"] == CategoricalParam(name="optim", choices=("adamw", "sgd"))
    assert space["momentum"].when == {"optim": ("sgd",)}
    assert space["optim"].default is NO_DEFAULT and not space["optim"].has_default
    with pytest.raises(AttributeError):
        space["layers"].low = 0  # type: ignore[misc]


def test_params_hash_and_compare():
    param = FloatParam(name="m", low=0.0, high=1.0, when={"optim": ("sgd",)})
    assert hash(param) == hash(FloatParam(name="m", low=0.0, high=1.0, when={"optim": ("sgd",)}))
    assert param != FloatParam(name="m", low=0.0, high=1.0)


@pytest.mark.parametrize("empty", [None, {}])
def test_empty_space(empty):
    space = SearchSpace.from_mapping(empty)
    assert space.is_empty and len(space) == 0 and space.names == []
    assert space.sample(_study().ask()) == {}
    assert space.validate({}, require_all=True) == {}
    assert space.defaults() == ({}, {})
    assert space.grid() == {}
    assert space.to_dict() == {}


def test_yaml_11_number_strings_are_accepted_for_float_bounds():
    raw = yaml.safe_load("lr: {type: float, low: 1e-4, high: 1e-1, log: true, default: 1e-3}")
    assert raw["lr"]["low"] == "1e-4"  # what PyYAML (YAML 1.1) gives
    param = SearchSpace.from_mapping(raw)["lr"]
    assert (param.low, param.high, param.default) == (1e-4, 0.1, 1e-3)
    assert isinstance(param.low, float)


def test_int_bounds_accept_integral_floats_and_huge_ints():
    space = _space(
        n={"type": "int", "low": 1.0, "high": "1e3"},
        huge={"type": "int", "low": -(10**30), "high": 10**30, "step": 10**10, "default": 10**29},
    )
    assert (space["n"].low, space["n"].high) == (1, 1000)
    assert isinstance(space["n"].high, int)
    assert space["huge"].high == 10**30
    params, how = space.defaults()
    assert params == {"n": 500, "huge": 10**29}
    assert how == {"n": "midpoint", "huge": "default"}
    assert space.validate({"huge": 10**30 - 10**10}) == {"huge": 10**30 - 10**10}


@pytest.mark.parametrize(
    ("mapping", "match"),
    [
        ([1, 2], r"^`space` is \[1, 2\] \(list\), but must be a mapping"),
        ({"lr": 0.1}, r"`space.lr` is 0.1, but must be a mapping"),
        ({"": {"type": "float"}}, r"`space` has a param named '', but names must be identifiers"),
        ({"my-lr": {"type": "float"}}, r"param named 'my-lr'"),
        ({3: {"type": "float"}}, r"param named 3,"),
        (
            {"lr": {"low": 0, "high": 1}},
            r"`space.lr.type` is missing \(it must be one of float \| int \| categorical\)",
        ),
        ({"lr": {"type": "flaot"}}, r"`space.lr.type` is 'flaot', but must be one of .* \(did you mean `float`\?\)"),
        ({"lr": {"type": ["float"]}}, r"`space.lr.type` is \['float'\] \(list\)"),
        (
            {"lr": {"type": "float", "low": 0, "hihg": 1}},
            r"`space.lr.hihg` is not a param key \(did you mean `high`\?\)",
        ),
        (
            {"lr": {"type": "float", "low": 0, "high": 1, "choices": [1]}},
            r"`space.lr.choices` does not apply to a float",
        ),
        ({"c": {"type": "categorical", "choices": [1], "low": 0}}, r"`space.c.low` does not apply to a categorical"),
        ({"lr": {"type": "float", "high": 1}}, r"`space.lr.low` is missing"),
        ({"lr": {"type": "float", "low": 0}}, r"`space.lr.high` is missing"),
        ({"lr": {"type": "float", "low": True, "high": 1}}, r"`space.lr.low` is True, but must be a number"),
        ({"lr": {"type": "float", "low": "abc", "high": 1}}, r"`space.lr.low` is 'abc', but must be a number"),
        ({"lr": {"type": "float", "low": None, "high": 1}}, r"`space.lr.low` is None, but must be a number"),
        ({"lr": {"type": "float", "low": float("nan"), "high": 1}}, r"`space.lr.low` is nan, but must be a finite"),
        ({"lr": {"type": "float", "low": 0, "high": "-inf"}}, r"`space.lr.high` is '-inf', but must be a finite"),
        ({"lr": {"type": "float", "low": 0, "high": float("inf")}}, r"`space.lr.high` is inf, but must be a finite"),
        ({"lr": {"type": "float", "low": 0.1, "high": 0.01}}, r"^`space.lr.low` is 0.1, but must be < high \(0.01\)$"),
        ({"lr": {"type": "float", "low": 0.1, "high": 0.1}}, r"`space.lr.low` is 0.1, but must be < high \(0.1\)"),
        ({"n": {"type": "int", "low": 4, "high": 2}}, r"`space.n.low` is 4, but must be < high \(2\)"),
        (
            {"lr": {"type": "float", "low": 0, "high": 1, "log": True}},
            r"`space.lr.low` is 0.0, but must be > 0 when log",
        ),
        ({"n": {"type": "int", "low": 0, "high": 8, "log": True}}, r"`space.n.low` is 0, but must be > 0 when log"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": "yes"}}, r"`space.lr.log` is 'yes', but must be true or"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": 1}}, r"`space.lr.log` is 1, but must be true or false"),
        ({"x": {"type": "float", "low": 1, "high": 9, "log": True, "step": 1}}, r"`space.x`: log and step cannot be"),
        ({"n": {"type": "int", "low": 1, "high": 9, "log": True, "step": 2}}, r"`space.n`: log and step cannot be"),
        ({"n": {"type": "int", "low": 1.5, "high": 9}}, r"`space.n.low` is 1.5, but must be a whole number"),
        ({"n": {"type": "int", "low": 1, "high": "ten"}}, r"`space.n.high` is 'ten', but must be an integer"),
        (
            {"n": {"type": "int", "low": 1, "high": 9, "step": 0.5}},
            r"`space.n.step` is 0.5, but must be a whole number",
        ),
        ({"n": {"type": "int", "low": 1, "high": 9, "step": 0}}, r"`space.n.step` is 0, but must be > 0"),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": -0.1}}, r"`space.x.step` is -0.1, but must be > 0"),
        (
            {"x": {"type": "float", "low": 0, "high": 1e300, "step": 1e-300}},
            r"`space.x.step` is 1e-300, but must be at least \(high - low\) / 1e\+15",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 10**400}},
            r"`space.x.high` is an integer of about 401 digits, but must be a finite number",
        ),
        ({"x": {"type": "float", "low": 0, "high": 1, "step": "x"}}, r"`space.x.step` is 'x', but must be a number"),
        ({"c": {"type": "categorical"}}, r"`space.c.choices` is missing"),
        ({"c": {"type": "categorical", "choices": []}}, r"`space.c.choices` is empty"),
        ({"c": {"type": "categorical", "choices": "ab"}}, r"`space.c.choices` is 'ab', but must be a list"),
        ({"c": {"type": "categorical", "choices": ["a", "b", "a"]}}, r"`space.c.choices` has 'a' twice"),
        ({"c": {"type": "categorical", "choices": [1, True]}}, r"has 1 and True, which compare equal"),
        ({"c": {"type": "categorical", "choices": [1, 1.0]}}, r"has 1 and 1.0, which compare equal"),
        ({"c": {"type": "categorical", "choices": ["a", [1]]}}, r"`space.c.choices\[1\]` is \[1\] \(list\), but must"),
        ({"c": {"type": "categorical", "choices": [float("nan")]}}, r"`space.c.choices\[0\]` is nan, but must not be"),
        (
            {"c": {"type": "categorical", "choices": ["a"], "default": "b"}},
            r"`space.c.default` is 'b', but must be one",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "default": 2}},
            r"`space.x.default` is 2, but must be in \[0.0, 1.0",
        ),
        (
            {"n": {"type": "int", "low": 0, "high": 9, "step": 3, "default": 4}},
            r"`space.n.default` is 4, but must be on",
        ),
        (
            {"n": {"type": "int", "low": 0, "high": 9, "default": 2.5}},
            r"`space.n.default` is 2.5, but must be an integer",
        ),
        ({"x": {"type": "float", "low": 0, "high": 1, "when": "a"}}, r"`space.x.when` is 'a', but must be a non-empty"),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "when": {}}},
            r"`space.x.when` is \{\} \(dict\), but must be a no",
        ),
        (
            {"x": {"type": "float", "low": 0, "high": 1, "when": {"x": 1}}},
            r"`space.x.when.x`: a param cannot depend on it",
        ),
    ],
)
def test_each_parse_rule(mapping, match):
    with pytest.raises(ConfigError, match=match):
        SearchSpace.from_mapping(mapping)


def test_when_rules():
    optim = {"type": "categorical", "choices": ["adamw", "sgd"]}
    momentum = {"type": "float", "low": 0.5, "high": 0.99}
    with pytest.raises(ConfigError, match=r"`space.momentum.when.optimm` names no param .* \(did you mean `optim`\?\)"):
        _space(optim=optim, momentum={**momentum, "when": {"optimm": "sgd"}})
    with pytest.raises(ConfigError, match=r"`space.momentum.when.optim` is 'sdg', but optim must be one of 'adamw' \|"):
        _space(optim=optim, momentum={**momentum, "when": {"optim": ["sgd", "sdg"]}})
    with pytest.raises(ConfigError, match=r"`space.momentum.when.optim` is an empty list"):
        _space(optim=optim, momentum={**momentum, "when": {"optim": []}})
    with pytest.raises(ConfigError, match=r"`space.momentum.when.optim` has \{'a': 1\} \(dict\), but each value must"):
        _space(optim=optim, momentum={**momentum, "when": {"optim": {"a": 1}}})
    with pytest.raises(ConfigError, match=r"`space.b.when.n` is 11, but n must be in \[0, 10\]"):
        _space(n={"type": "int", "low": 0, "high": 10}, b={**momentum, "when": {"n": 11}})


def test_when_cycles_are_named():
    spec = {"type": "categorical", "choices": [1, 2]}
    problems = _problems(
        {
            "a": {**spec, "when": {"c": 1}},
            "b": {**spec, "when": {"a": 1}},
            "c": {**spec, "when": {"b": 1}},
            "d": {**spec, "when": {"e": 1}},
            "e": {**spec, "when": {"d": 2}},
            "f": {**spec, "when": {"a": 1}},  # hangs off a cycle; not one itself
        }
    )
    assert problems == [
        "`space`: the `when:` conditions form a cycle (a -> c -> b -> a), so no order samples them",
        "`space`: the `when:` conditions form a cycle (d -> e -> d), so no order samples them",
    ]


def test_all_problems_are_collected_in_one_message():
    problems = _problems(
        {
            "lr": {"type": "float", "low": 0.1, "high": 0.01, "lgo": True},
            "n": {"type": "int", "low": 1.5, "high": "abc", "step": 0},
            "c": {"type": "categorical", "choices": ["a", "a"]},
            "bad name": {"type": "float"},
            "m": {"type": "float", "low": 0, "high": 1, "when": {"nope": 1}},
        }
    )
    assert problems == [
        "`space.lr.lgo` is not a param key (did you mean `log`?)",
        "`space.lr.low` is 0.1, but must be < high (0.01)",
        "`space.n.low` is 1.5, but must be a whole number",
        "`space.n.high` is 'abc', but must be an integer",
        "`space.n.step` is 0, but must be > 0",
        "`space.c.choices` has 'a' twice",
        "`space` has a param named 'bad name', but names must be identifiers such as learning_rate",
        "`space.m.when.nope` names no param of the space",
    ]


def test_where_prefixes_every_path():
    with pytest.raises(ConfigError, match=r"^`experiment.space.lr.type` is missing"):
        SearchSpace.from_mapping({"lr": {}}, where="experiment.space")


def test_step_need_not_divide_the_range():
    space = _space(
        x={"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}, n={"type": "int", "low": 1, "high": 10, "step": 4}
    )
    assert space.grid() == {"x": [0.0, 0.3, 0.6, 0.9], "n": [1, 5, 9]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna would warn on every suggest if given the off-grid high
        for trial in (_study().ask() for _ in range(20)):
            params = space.sample(trial)
            assert params["x"] <= 0.9 + 1e-12 and params["n"] in (1, 5, 9)


def test_int_log_with_step_one_is_allowed():
    assert _space(n={"type": "int", "low": 1, "high": 64, "log": True, "step": 1})["n"].step == 1


# --- sampling -----------------------------------------------------------------------------------------------------


def _is_on_grid(value: float, low: float, step: float) -> bool:
    # low + k * step, to the precision floats of this magnitude have (a few ulps)
    nearest = low + round((value - low) / step) * step
    return abs(value - nearest) <= 8 * math.ulp(max(abs(value), abs(low), abs(step)))


def test_sample_respects_bounds_log_step_and_conditions():
    space = _example()
    study = _study()
    seen_optims = set()
    for _ in range(200):
        trial = study.ask()
        params = space.sample(trial)
        assert trial.params == params  # nothing else was suggested
        assert 1e-4 <= params["learning_rate"] <= 0.1
        assert 0.0 <= params["weight_decay"] <= 0.1
        assert 0.0 <= params["dropout"] <= 0.5 and _is_on_grid(params["dropout"], 0.0, 0.1)
        assert isinstance(params["channels"], int) and 16 <= params["channels"] <= 128
        assert params["layers"] in (1, 2, 3, 4)
        assert ("momentum" in params) == (params["optim"] == "sgd")
        if "momentum" in params:
            assert 0.5 <= params["momentum"] <= 0.99
        seen_optims.add(params["optim"])
        assert space.validate(params, require_all=True) == params
        for name in params:  # the distributions Optuna recorded are ours
            assert trial.distributions[name] == space[name].distribution(), name
    assert seen_optims == {"adamw", "sgd"}


def test_parents_are_sampled_before_children_declared_earlier():
    space = _space(
        deep={"type": "int", "low": 0, "high": 2, "when": {"use_extra": True}},
        extra={"type": "categorical", "choices": ["x", "y"], "when": {"optim": "sgd"}},
        use_extra={"type": "categorical", "choices": [True, False], "when": {"extra": "x"}},
        optim={"type": "categorical", "choices": ["adamw", "sgd"]},
    )
    study = _study(seed=1)
    for _ in range(100):
        trial = study.ask()
        params = space.sample(trial)
        assert list(params) == [name for name in space.names if name in params]  # file order
        assert ("extra" in params) == (params["optim"] == "sgd")
        assert ("use_extra" in params) == (params.get("extra") == "x")
        assert ("deep" in params) == (params.get("use_extra") is True)
        assert list(trial.params) == [n for n in ["optim", "extra", "use_extra", "deep"] if n in params]


def test_sample_with_fixed_trial_asks_only_active_params():
    space = _example()
    fixed = {
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "dropout": 0.2,
        "channels": 32,
        "layers": 3,
        "optim": "adamw",
    }
    assert space.sample(optuna.trial.FixedTrial(fixed)) == fixed
    with_momentum = {**fixed, "optim": "sgd", "momentum": 0.9}
    assert space.sample(optuna.trial.FixedTrial(with_momentum)) == with_momentum


def test_define_by_run_samples_and_returns_none():
    space = _example()
    trial = _study().ask()
    assert space.define_by_run(trial) is None
    assert set(trial.params) <= set(space.names) and "learning_rate" in trial.params


def test_define_by_run_drives_a_whole_study():
    space = _example()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    study.optimize(lambda trial: space.sample(trial)["learning_rate"], n_trials=15)
    assert len(study.trials) == 15 and study.best_value >= 1e-4


def test_distributions():
    distributions = _example().distributions()
    assert distributions["learning_rate"] == optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)
    assert distributions["layers"] == optuna.distributions.IntDistribution(1, 4)
    assert distributions["optim"] == optuna.distributions.CategoricalDistribution(["adamw", "sgd"])
    assert set(distributions) == set(_example().names)


# --- validate -----------------------------------------------------------------------------------------------------


def test_validate_normalizes():
    space = _example()
    given = {"learning_rate": "1e-3", "weight_decay": 0, "channels": 32.0, "optim": "sgd", "momentum": 1 - 0.1}
    result = space.validate(given)
    assert result == {"learning_rate": 1e-3, "weight_decay": 0.0, "channels": 32, "optim": "sgd", "momentum": 0.9}
    assert type(result["weight_decay"]) is float and type(result["channels"]) is int
    assert list(result) == ["learning_rate", "weight_decay", "channels", "optim", "momentum"]
    assert space.validate({"dropout": 0.1 * 3}) == {"dropout": pytest.approx(0.3)}  # float noise is on the grid


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ([("lr", 1)], r"`params` is \[\('lr', 1\)\] \(list\), but must be a mapping"),
        ({"learning_rte": 0.01}, r"^`params.learning_rte` is not a param .* \(did you mean `learning_rate`\?\)$"),
        ({"learning_rate": 1.0}, r"`params.learning_rate` is 1.0, but must be in \[0.0001, 0.1\]"),
        ({"learning_rate": True}, r"`params.learning_rate` is True, but must be a number, not bool"),
        ({"learning_rate": float("nan")}, r"`params.learning_rate` is nan, but must be a finite number"),
        ({"learning_rate": None}, r"`params.learning_rate` is None, but must be a number, not NoneType"),
        ({"channels": 2.5}, r"`params.channels` is 2.5, but must be an integer, not float"),
        ({"channels": True}, r"`params.channels` is True, but must be an integer, not bool"),
        ({"channels": 200}, r"`params.channels` is 200, but must be in \[16, 128\]"),
        ({"dropout": 0.25}, r"`params.dropout` is 0.25, but must be on the step grid 0.0 \+ k \* 0.1"),
        ({"optim": "adam"}, r"`params.optim` is 'adam', but must be one of 'adamw' \| 'sgd'"),
        (
            {"optim": "adamw", "momentum": 0.9},
            r"`params.momentum` is given, but .* when optim is 'sgd' \(optim is 'adamw'\)",
        ),
        (
            {"momentum": 0.9},
            r"`params.momentum` is given, but momentum is only used when optim is 'sgd' \(optim is not set\)",
        ),
    ],
)
def test_validate_rejects(params, match):
    with pytest.raises(ConfigError, match=match):
        _example().validate(params)


def test_validate_int_step_and_bool_choices():
    space = _space(
        n={"type": "int", "low": 2, "high": 20, "step": 3},
        flag={"type": "categorical", "choices": [True, False]},
        k={"type": "categorical", "choices": [1, 2]},
    )
    assert space.validate({"n": 14, "flag": False, "k": 2.0}) == {"n": 14, "flag": False, "k": 2}
    with pytest.raises(ConfigError, match=r"`params.n` is 13, but must be on the step grid 2 \+ k \* 3"):
        space.validate({"n": 13})
    with pytest.raises(ConfigError, match=r"`params.flag` is 1, but must be one of True \| False"):
        space.validate({"flag": 1})
    with pytest.raises(ConfigError, match=r"`params.k` is True, but must be one of 1 \| 2"):
        space.validate({"k": True})


def test_validate_collects_every_problem_without_cascading():
    with pytest.raises(ConfigError) as info:
        _example().validate({"learning_rate": 5, "optim": "sdg", "momentum": 0.9, "bogus": 1})
    assert str(info.value).split("; ") == [
        "`params.bogus` is not a param of the search space",
        "`params.learning_rate` is 5, but must be in [0.0001, 0.1]",
        "`params.optim` is 'sdg', but must be one of 'adamw' | 'sgd'",
    ]  # momentum is not blamed: whether it is used depends on the wrong optim


def test_validate_blames_a_given_inactive_param_once():
    space = _space(
        a={"type": "categorical", "choices": ["x", "y"]},
        b={"type": "categorical", "choices": ["p", "q"], "when": {"a": "x"}},
        c={"type": "int", "low": 0, "high": 1, "when": {"b": "p"}},
    )
    with pytest.raises(ConfigError) as info:
        space.validate({"a": "y", "b": "p", "c": 1})
    assert str(info.value) == "`params.b` is given, but b is only used when a is 'x' (a is 'y')"


def test_validate_require_all():
    space = _example()
    partial = {"learning_rate": 0.01, "optim": "sgd"}
    assert space.validate(partial) == partial
    with pytest.raises(ConfigError) as info:
        space.validate(partial, require_all=True)
    assert str(info.value).split("; ") == [
        "`params.weight_decay` is missing (a float in [0.0, 0.1])",
        "`params.dropout` is missing (a float in [0.0, 0.5])",
        "`params.channels` is missing (an int in [16, 128])",
        "`params.layers` is missing (an int in [1, 4])",
        "`params.momentum` is missing (a float in [0.5, 0.99])",
    ]
    full, _ = space.defaults()
    assert space.validate(full, require_all=True) == full  # momentum is not required with adamw


def test_is_active():
    space = _example()
    assert space.is_active("learning_rate", {})
    assert space.is_active("momentum", {"optim": "sgd"})
    assert not space.is_active("momentum", {"optim": "adamw"})
    assert not space.is_active("momentum", {})
    chained = _space(
        a={"type": "categorical", "choices": ["x", "y"]},
        b={"type": "categorical", "choices": ["p", "q"], "when": {"a": "x"}},
        c={"type": "int", "low": 0, "high": 1, "when": {"b": "p"}},
    )
    assert chained.is_active("c", {"a": "x", "b": "p"})
    assert not chained.is_active("c", {"a": "y", "b": "p"})  # b is given but not active
    with pytest.raises(ConfigError, match=r"`cc` is not a param .* \(did you mean `c`\?\)"):
        chained.is_active("cc", {})


# --- defaults -----------------------------------------------------------------------------------------------------


def test_defaults():
    params, how = _example().defaults()
    assert params == {
        "learning_rate": pytest.approx(math.sqrt(1e-4 * 0.1)),
        "weight_decay": 0.05,
        "dropout": pytest.approx(0.2),  # 0.25 snapped to the 0.1 grid (a tie, rounded to even)
        "channels": 45,  # sqrt(16 * 128) = 45.25
        "layers": 2,
        "optim": "adamw",
    }
    assert how == {
        "learning_rate": "midpoint",
        "weight_decay": "midpoint",
        "dropout": "midpoint",
        "channels": "midpoint",
        "layers": "default",
        "optim": "first choice",
    }


def test_defaults_evaluate_conditions_on_chosen_values():
    mapping = yaml.safe_load(EXAMPLE_YAML)["space"]
    mapping["optim"]["default"] = "sgd"
    params, how = SearchSpace.from_mapping(mapping).defaults()
    assert params["optim"] == "sgd" and how["optim"] == "default"
    assert params["momentum"] == pytest.approx(0.745) and how["momentum"] == "midpoint"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "int", "low": 1, "high": 4}, 2),
        ({"type": "int", "low": 0, "high": 10, "step": 3}, 6),  # 5 -> nearest of 0, 3, 6, 9
        ({"type": "int", "low": 1, "high": 1000, "log": True}, 32),  # sqrt(1000) = 31.6
        ({"type": "int", "low": 0, "high": 10, "step": 7}, 7),  # 5 -> 7, still <= high
        ({"type": "float", "low": 1.0, "high": 100.0, "log": True}, 10.0),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}, 0.6),
        ({"type": "float", "low": -1e308, "high": 1.7e308}, 3.5e307),  # no overflow
        ({"type": "categorical", "choices": [None, "a"]}, None),
    ],
)
def test_midpoints(spec, expected):
    params, _ = _space(x=spec).defaults()
    if expected is None:
        assert params["x"] is None
    else:
        assert params["x"] == pytest.approx(expected)
    assert _space(x=spec).validate(params) == params


def test_a_none_default_is_kept_apart_from_no_default():
    space = _space(x={"type": "categorical", "choices": ["a", None], "default": None})
    assert space["x"].has_default and space.defaults() == ({"x": None}, {"x": "default"})
    assert space.to_dict() == {"x": {"type": "categorical", "choices": ["a", None], "default": None}}


# --- grid ---------------------------------------------------------------------------------------------------------


def test_grid_values():
    space = _space(
        drop={"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        n={"type": "int", "low": 1, "high": 4},
        opt={"type": "categorical", "choices": ["adamw", "sgd"]},
    )
    assert space.grid() == {"drop": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], "n": [1, 2, 3, 4], "opt": ["adamw", "sgd"]}


def test_grid_sampler_runs_every_combination_once():
    space = _space(
        drop={"type": "float", "low": 0.0, "high": 0.2, "step": 0.1},
        n={"type": "int", "low": 2, "high": 8, "step": 3},
        opt={"type": "categorical", "choices": ["adamw", "sgd", None]},
    )
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid(), seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # GridSampler warns when a grid value is outside the distribution
        study.optimize(lambda trial: space.sample(trial)["n"], n_trials=50)
    combos = {(t.params["drop"], t.params["n"], t.params["opt"]) for t in study.trials}
    assert len(study.trials) == len(combos) == 3 * 3 * 3
    assert {c[0] for c in combos} == {0.0, 0.1, 0.2}


def test_grid_rejects_continuous_floats():
    with pytest.raises(ConfigError) as info:
        _example().grid()
    assert str(info.value) == (
        "`space.learning_rate`: the grid sampler needs a finite set of values, but learning_rate is a continuous "
        "float (give it a step or make it categorical)"
    )


def test_grid_rejects_conditional_params():
    space = _space(
        optim={"type": "categorical", "choices": ["adamw", "sgd"]},
        momentum={"type": "float", "low": 0.5, "high": 0.9, "step": 0.1, "when": {"optim": "sgd"}},
    )
    with pytest.raises(ConfigError, match=r"`space.momentum.when`: the grid sampler does not support conditional"):
        space.grid()


def test_grid_rejects_huge_grids():
    with pytest.raises(ConfigError, match=r"`space.x` has 1000000001 grid values, more than the grid sampler limit"):
        _space(x={"type": "float", "low": 0.0, "high": 1.0, "step": 1e-9}).grid()
    with pytest.raises(ConfigError, match=r"`space.n` has \d+ grid values"):
        _space(n={"type": "int", "low": 0, "high": 10**30}).grid()


# --- round trips --------------------------------------------------------------------------------------------------


def test_to_dict_round_trips():
    space = _example()
    as_dict = space.to_dict()
    assert as_dict["momentum"] == {"type": "float", "low": 0.5, "high": 0.99, "when": {"optim": ["sgd"]}}
    assert as_dict["layers"] == {"type": "int", "low": 1, "high": 4, "default": 2}  # step 1 is the default
    assert SearchSpace.from_mapping(as_dict) == space
    assert SearchSpace.from_mapping(yaml.safe_load(yaml.safe_dump(as_dict, sort_keys=False))) == space
    assert SearchSpace.from_mapping(as_dict) != _space(x={"type": "int", "low": 0, "high": 1})


def test_pickle_and_copy_keep_the_space():
    space = _space(x={"type": "categorical", "choices": ["a", "b"]}, y={"type": "int", "low": 0, "high": 3})
    for clone in (pickle.loads(pickle.dumps(space)), copy.deepcopy(space)):  # Ray pickles define_by_run
        assert clone == space
        assert clone["x"].default is NO_DEFAULT
        assert clone.defaults() == space.defaults()


def test_constructor_checks_conditions_too():
    with pytest.raises(ConfigError, match=r"`space.a` is defined twice"):
        SearchSpace([IntParam(name="a", low=0, high=1), IntParam(name="a", low=0, high=2)])
    with pytest.raises(ConfigError, match=r"`space.a.when.b` names no param"):
        SearchSpace([IntParam(name="a", low=0, high=1, when={"b": (1,)})])


def test_importing_space_needs_neither_torch_nor_optuna():
    code = (
        "import sys; sys.modules['torch'] = None; import tunetrain.space; "
        "assert 'optuna' not in sys.modules, 'optuna imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    tree = ast.parse((ROOT / "tunetrain" / "space.py").read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = {alias.name for node in top_level for alias in node.names} | {
        node.module for node in top_level if isinstance(node, ast.ImportFrom)
    }
    assert not {name for name in names if name and name.split(".")[0] in ("optuna", "torch", "ray")}


SPACE_FILES = sorted((ROOT / "search_spaces").glob("**/*.yaml"))


@pytest.mark.parametrize("path", SPACE_FILES, ids=[p.name for p in SPACE_FILES])
def test_every_ready_experiment_file_has_a_valid_space(path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    space = SearchSpace.from_mapping(raw.get("space"))
    params, _ = space.defaults()
    assert space.validate(params, require_all=True) == params


# --- properties ---------------------------------------------------------------------------------------------------

_finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def _numeric_specs(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["float", "int"]))
    log = draw(st.booleans())
    if kind == "int":
        low = draw(st.integers(1 if log else -1000, 1000))
        high = draw(st.integers(low + 1, low + 10_000))
        step = None if log else draw(st.none() | st.integers(1, 50))
    else:
        low = draw(st.floats(1e-8, 1e3) if log else _finite)
        high = draw(st.floats(low, low * 1e6 if log else low + 1e6).filter(lambda h, low=low: h > low))
        step = None if log else draw(st.none() | st.floats((high - low) / 1000, high - low))
    spec = {"type": kind, "low": low, "high": high, "log": log}
    if step is not None:
        spec["step"] = step
    return spec


# Optuna re-checks with decimals that high is on the step grid; for random floats it can be off by an ulp.
@pytest.mark.filterwarnings("ignore:The distribution is specified by")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_numeric_specs(), seed=st.integers(0, 2**16))
def test_property_valid_numeric_specs_sample_within_bounds(spec, seed):
    space = SearchSpace.from_mapping({"x": spec})
    study = _study(seed)
    for _ in range(5):
        value = space.sample(study.ask())["x"]
        assert spec["low"] <= value <= spec["high"]
        assert isinstance(value, int if spec["type"] == "int" else float)
        if "step" in spec:
            assert _is_on_grid(value, spec["low"], spec["step"])
        assert space.validate({"x": value}) == {"x": value}
    params, _ = space.defaults()
    assert space.validate(params, require_all=True) == params
    assert SearchSpace.from_mapping(space.to_dict()) == space


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | _finite
    | st.sampled_from(["a", "b", "1e-3", "", "nan", 1e300, -1e-300, 5e-324, 10**30, -(10**400)])
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["type", "low", "high", "log", "step", "choices", "default", "when", "other"])
_names = st.sampled_from(["a", "b", "c", "1x", ""])
_type_values = st.sampled_from(["float", "int", "categorical", "bogus"]) | _scalars
_param_specs = st.dictionaries(_keys, _junk, max_size=6).flatmap(
    lambda spec: st.builds(lambda kind: {**spec, "type": kind}, _type_values) | st.just(spec)
)
_categorical_specs = st.builds(
    lambda choices: {"type": "categorical", "choices": choices},
    st.lists(st.sampled_from(["a", "b", "x"]) | st.integers(0, 3) | st.booleans(), min_size=1, max_size=3, unique=True),
)
_good_names = st.sampled_from(["a", "b", "c"])
_condition_values = st.sampled_from(["a", "b", "x", 0, 1, True, 2.5, None])
_conditions = st.dictionaries(
    _good_names, _condition_values | st.lists(_condition_values, min_size=1, max_size=2), min_size=1, max_size=2
)


@st.composite
def _mutated_specs(draw: st.DrawFn) -> dict:
    """A valid spec (often) with a few keys replaced by junk or a condition, or removed."""
    spec = dict(draw(_numeric_specs() | _categorical_specs))
    if draw(st.booleans()):
        spec["when"] = draw(_conditions)
    if draw(st.integers(0, 5)) == 0:
        spec[draw(_keys)] = draw(_junk)
    if draw(st.integers(0, 7)) == 0:
        spec.pop(draw(_keys), None)
    return spec


_spaces = (
    st.dictionaries(_good_names, _mutated_specs(), max_size=3)
    | st.dictionaries(_names, _mutated_specs() | _param_specs | _junk, max_size=4)
    | _junk
)


@pytest.mark.filterwarnings("ignore:The distribution is specified by")
@settings(max_examples=200, deadline=None)
@given(mapping=_spaces)
def test_property_junk_parses_or_raises_config_error(mapping):
    try:
        space = SearchSpace.from_mapping(mapping)
    except ConfigError as exc:
        assert str(exc)
        return
    params, _ = space.defaults()  # whatever parsed is usable
    assert space.validate(params, require_all=True) == params
    assert SearchSpace.from_mapping(space.to_dict()) == space


@settings(max_examples=100, deadline=None)
@given(params=st.dictionaries(st.sampled_from([*_example().names, "other"]), _junk, max_size=5))
def test_property_validate_accepts_or_raises_config_error(params):
    try:
        result = _example().validate(params)
    except ConfigError:
        return
    assert _example().validate(result) == result


@st.composite
def _conditional_spaces(draw: st.DrawFn) -> dict:
    """A categorical root, a numeric child active on some of its choices, and maybe a grandchild on the child."""
    choices = draw(st.lists(st.sampled_from(["a", "b", "x", 0, 1, True, None]), min_size=1, max_size=4, unique=True))
    on = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=len(choices), unique=True))
    mapping = {
        "root": {"type": "categorical", "choices": choices},
        "child": {**draw(_numeric_specs()), "when": {"root": on}},
    }
    if draw(st.booleans()):
        mapping["leaf"] = {
            "type": "categorical",
            "choices": [1, 2],
            "when": {"root": on[0], "child": draw(st.integers())},
        }
    names = draw(st.permutations(list(mapping)))  # file order must not matter for sampling
    return {name: mapping[name] for name in names}


@pytest.mark.filterwarnings("ignore:The distribution is specified by")
@settings(max_examples=40, deadline=None)
@given(mapping=_conditional_spaces(), seed=st.integers(0, 2**16))
def test_property_conditional_params_are_sampled_exactly_when_active(mapping, seed):
    try:
        space = SearchSpace.from_mapping(mapping)
    except ConfigError as exc:  # only the leaf's condition on the numeric child can be impossible
        assert "`space.leaf.when.child`" in str(exc) and len(str(exc).split("; ")) == 1
        return
    study = _study(seed)
    for _ in range(5):
        trial = study.ask()
        params = space.sample(trial)
        assert trial.params == params
        child_on = any(
            params["root"] == v and type(params["root"]) is type(v) for v in mapping["child"]["when"]["root"]
        )
        assert ("child" in params) == child_on
        assert space.validate(params, require_all=True) == params
        for name in space.names:
            assert (name in params) == space.is_active(name, params)
    params, _ = space.defaults()
    assert space.validate(params, require_all=True) == params


def test_ten_thousand_bad_or_repeated_choices_are_named_three_at_a_time():
    # before: one line of ~300 KB, every repeat named
    repeated = {"c": {"type": "categorical", "choices": [i % 7 for i in range(10_000)]}}
    with pytest.raises(ConfigError) as caught:
        SearchSpace.from_mapping(repeated)
    assert str(caught.value) == (
        "`space.c.choices` has 0 twice; `space.c.choices` has 1 twice; `space.c.choices` has 2 twice; "
        "`space.c.choices` repeats 9990 more values"
    )
    nested = {"c": {"type": "categorical", "choices": [[i] for i in range(10_000)]}}
    with pytest.raises(ConfigError) as caught:
        SearchSpace.from_mapping(nested)
    message = str(caught.value)
    assert len(message) < 600 and message.endswith("`space.c.choices` has 9997 more such choices"), message


def test_true_1_and_1_0_are_still_one_choice_to_optuna():
    with pytest.raises(ConfigError, match=r"has 1 and True, which compare equal"):
        SearchSpace.from_mapping({"c": {"type": "categorical", "choices": [1, True]}})
    with pytest.raises(ConfigError, match=r"has 1 and 1\.0, which compare equal"):
        SearchSpace.from_mapping({"c": {"type": "categorical", "choices": [1, 1.0]}})
