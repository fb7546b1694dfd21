"""`tunetrain.tuning.components` and the backends by name: what an experiment file names is built in one place."""

from __future__ import annotations

import optuna
import pytest

from tunetrain.args import TrainingArguments
from tunetrain.space import SearchSpace
from tunetrain.tuning import components, config
from tunetrain.tuning.backend import Backend
from tunetrain.tuning.config import SearchConfig
from tunetrain.tuning.driver import backend_class

SPACE = SearchSpace.from_mapping({"units": {"type": "int", "low": 1, "high": 4}})
ARGS = TrainingArguments(output_dir="unused", eval_strategy="epoch", num_train_epochs=4)


def _config(**section) -> SearchConfig:
    return SearchConfig.from_dict(section, space=SPACE, args=ARGS)


def test_the_file_accepts_exactly_the_names_that_can_be_built():
    assert tuple(components.SAMPLERS) == config.SAMPLERS
    assert tuple(components.SCHEDULERS) == config.SCHEDULERS
    for name in config.BACKENDS:  # each name's class is there
        assert issubclass(backend_class(name), Backend)


@pytest.mark.parametrize(
    ("scheduler", "pruner"),
    [("asha", optuna.pruners.SuccessiveHalvingPruner), ("none", optuna.pruners.NopPruner)],
)
def test_each_scheduler_has_an_optuna_pruner(scheduler, pruner):
    assert isinstance(components.make_pruner(_config(scheduler=scheduler)), pruner)


def test_asha_s_pruner_takes_the_configured_rungs():
    made = components.make_pruner(_config(scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 4}))
    assert (made._min_resource, made._reduction_factor, made._min_early_stopping_rate) == (2, 4, 0)


def test_each_scheduler_has_a_ray_scheduler():
    from ray.tune.schedulers import ASHAScheduler

    from tunetrain.tuning.ray.search_state import SearchState

    state = SearchState()
    asha = components.make_ray_scheduler(_config(scheduler="asha"), max_t=4, search_state=state)
    assert isinstance(asha, ASHAScheduler) and asha.search_state is state and asha._max_t == 4
    assert components.make_ray_scheduler(_config(scheduler="none"), max_t=None, search_state=state) is None


def test_asha_that_promotes_and_pbt_are_ours_and_pause_trials(tmp_path):
    from tunetrain.storage import ExperimentDir
    from tunetrain.tuning.ray.schedulers import ExactPBT, PromotingASHA
    from tunetrain.tuning.ray.search_state import SearchState

    state, exp_dir = SearchState(), ExperimentDir.open(str(tmp_path), "x")
    promoting = _config(scheduler={"type": "asha", "promote": True, "grace_period": 2})
    made = components.make_ray_scheduler(promoting, max_t=20, search_state=state, num_samples=9)
    assert isinstance(made, PromotingASHA) and made.rungs == [2, 6, 18] and components.pauses_trials(promoting)
    pbt = _config(scheduler={"type": "pbt", "perturbation_interval": 3, "hyperparam_mutations": ["units"]})
    made = components.make_ray_scheduler(pbt, max_t=None, search_state=state, space=SPACE, exp_dir=exp_dir)
    assert isinstance(made, ExactPBT) and made.mutations == ("units",) and made.exp_dir is exp_dir
    assert made._perturbation_interval == 3 and components.pauses_trials(pbt)
    assert not components.pauses_trials(_config(scheduler="asha"))


def test_the_last_rung_is_the_budget_unless_set():
    from tunetrain.experiment import experiment_from_dict
    from tunetrain.tuning.trial import max_t_for

    raw = {"name": "x", "task": "m:t", "train": {"eval_strategy": "epoch", "num_train_epochs": 4}}
    raw["space"] = {"units": {"type": "int", "low": 1, "high": 4}}
    experiment = experiment_from_dict(raw)
    assert max_t_for(experiment, _config()) == 4  # one evaluation per epoch; needs no data
    assert max_t_for(experiment, _config(scheduler={"type": "asha", "max_t": 3})) == 3
    assert max_t_for(experiment, _config(scheduler="none")) is None


def test_a_search_state_pickles_empty_and_stays_shared_within_one_pickle():
    import pickle

    from tunetrain.tuning.ray.search_state import SearchState

    state = SearchState(stopped_early={"t1"}, config_errors=["bad"])
    first, second = pickle.loads(pickle.dumps([state, state]))
    assert first is second and first.stopped_early == set() and first.config_errors == []
