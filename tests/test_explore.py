"""PBT's explore step: perturbed params stay inside the space, on its scale and grid, with its conditions."""

from __future__ import annotations

import math
import random
import re

import pytest

from tunetrain.errors import ConfigError
from tunetrain.experiment import experiment_from_dict
from tunetrain.space import SearchSpace
from tunetrain.tuning.config import SchedulerConfig
from tunetrain.tuning.explore import check_mutations_keep_shape, draw, explore, pbt_mutations

SPACE = SearchSpace.from_mapping(
    {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "weight_decay": {"type": "float", "low": 0.0, "high": 0.2, "step": 0.01},
        "layers": {"type": "int", "low": 1, "high": 9, "step": 2},
        "activation": {"type": "categorical", "choices": ["relu", "gelu", "leaky"]},
        "slope": {"type": "float", "low": 0.01, "high": 0.3, "when": {"activation": "leaky"}},
    }
)
MUTATED = ("learning_rate", "weight_decay", "layers", "activation", "slope")


def test_every_explored_value_stays_in_its_range_on_its_grid_and_under_its_condition():
    rng = random.Random(0)
    params = {"learning_rate": 0.099, "weight_decay": 0.2, "layers": 9, "activation": "leaky", "slope": 0.3}
    seen_activations = set()
    for _ in range(300):
        params, how = explore(params, SPACE, MUTATED, rng, resample_probability=0.25)
        assert SPACE.validate(params, require_all=True) == params  # in range, on the grid, conditions right
        assert ("slope" in params) == (params["activation"] == "leaky")
        assert isinstance(params["layers"], int) and params["layers"] % 2 == 1
        seen_activations.add(params["activation"])
        assert how  # something was perturbed or drawn each time
    assert seen_activations == {"relu", "gelu", "leaky"}  # a categorical is resampled


def test_a_perturbed_number_moves_by_a_factor_and_is_clipped_at_its_bound():
    rng = random.Random(1)
    moved, how = explore({"learning_rate": 0.09}, _one(), ("learning_rate",), rng, resample_probability=0.0)
    assert how["learning_rate"] in ("* 1.2", "* 0.8")
    factor = float(how["learning_rate"][2:])
    assert moved["learning_rate"] == pytest.approx(min(0.09 * factor, 0.1))


def test_resampling_a_log_param_draws_log_uniformly():
    rng = random.Random(2)
    param = SPACE["learning_rate"]
    logs = [math.log10(draw(param, rng)) for _ in range(2000)]
    below = sum(value < -2.5 for value in logs) / len(logs)  # the middle of [-4, -1] on a log scale
    assert 0.45 < below < 0.55  # uniform in the log: half below the middle (uniform in the value: ~1.6%)


def test_a_param_whose_condition_becomes_true_is_drawn_and_one_whose_condition_fails_is_dropped():
    rng = random.Random(3)
    seen = {"drawn": 0, "dropped": 0}
    params = {"learning_rate": 0.01, "weight_decay": 0.1, "layers": 3, "activation": "relu"}
    for _ in range(100):
        params, how = explore(params, SPACE, ("activation",), rng, resample_probability=1.0)
        seen["drawn"] += how.get("slope") == "drawn"
        seen["dropped"] += how.get("slope") == "dropped"
    assert seen["drawn"] and seen["dropped"]


def test_the_default_mutations_are_the_spaces_optimizer_settings():
    assert pbt_mutations(SchedulerConfig(type="pbt"), SPACE) == ("learning_rate", "weight_decay")
    named = SchedulerConfig(type="pbt", hyperparam_mutations=("layers",))
    assert pbt_mutations(named, SPACE) == ("layers",)


def test_a_mutated_model_param_that_changes_the_models_shape_is_refused():
    experiment = experiment_from_dict(
        {
            "name": "shape",
            "task": "tiny_task:task",
            "space": {
                "hidden": {"type": "int", "low": 4, "high": 16},
                "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            },
        }
    )
    check_mutations_keep_shape(experiment, ("dropout",), "search.scheduler.hyperparam_mutations")  # same shapes
    message = (
        "`search.scheduler.hyperparam_mutations` names 'hidden', which changes the model's shape ('0.weight' is "
        "(4, 12) at hidden=4, (16, 12) at hidden=16)"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_mutations_keep_shape(experiment, ("hidden", "dropout"), "search.scheduler.hyperparam_mutations")


def _one() -> SearchSpace:
    return SearchSpace.from_mapping({"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}})


def test_an_int_too_small_to_move_by_a_factor_moves_a_step_and_a_zero_says_it_stayed():
    space = SearchSpace.from_mapping({"layers": {"type": "int", "low": 1, "high": 8},
                                      "weight_decay": {"type": "float", "low": 0.0, "high": 0.2}})  # fmt: skip
    seen = set()
    for seed in range(20):
        moved, how = explore({"layers": 1, "weight_decay": 0.0}, space, ("layers", "weight_decay"),
                             random.Random(seed), resample_probability=0.0)  # fmt: skip
        seen.add(moved["layers"])
        assert moved["weight_decay"] == 0.0 and how["weight_decay"].endswith("(unchanged: 0, or at its bound)")
    assert seen == {1, 2}  # x 0.8 stays at the bound 1; x 1.2 rounds back to 1, so it moves a step up
