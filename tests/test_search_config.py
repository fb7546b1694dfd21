"""Unit tests for `tunetrain.tuning.config`: the `search:` section, storage resolution, and the Optuna samplers."""

from __future__ import annotations

import importlib.util
import os
import pickle
import re
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from pyarrow import fs

from tunetrain.args import TrainingArguments
from tunetrain.errors import ConfigError
from tunetrain.space import SearchSpace
from tunetrain.storage import resolve_storage
from tunetrain.tuning import components as components_module
from tunetrain.tuning.components import make_sampler
from tunetrain.tuning.config import Resources, SchedulerConfig, SearchConfig, with_cli_overrides

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "learning_rate": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
    "layers": {"type": "int", "low": 1, "high": 4},
    "optim": {"type": "categorical", "choices": ["adamw", "sgd"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optim": "sgd"}},
}
GRID_SPACE = {
    "layers": {"type": "int", "low": 1, "high": 2},
    "optim": {"type": "categorical", "choices": ["adamw", "sgd"]},
}


def _space(mapping: dict | None = None) -> SearchSpace:
    return SearchSpace.from_mapping(SPACE if mapping is None else mapping)


def _args(**values) -> TrainingArguments:
    return TrainingArguments(**{"eval_strategy": "epoch", **values})


def _load(raw: dict | None, *, space: SearchSpace | None = None, **args) -> SearchConfig:
    return SearchConfig.from_dict(raw, space=space or _space(), args=_args(**args))


# --- defaults ---------------------------------------------------------------------------------------------------


def test_defaults_follow_the_training_arguments():
    config = _load(None, metric_for_best_model="accuracy")
    assert (config.metric, config.mode) == ("eval_accuracy", "max")
    assert config == _load({}, metric_for_best_model="accuracy")
    assert config.backend == "ray"
    assert config.num_trials == 16
    assert config.max_concurrent_trials == 2
    assert config.time_budget_s is None
    assert config.sampler == "tpe"
    assert config.seed == 0
    assert config.scheduler == SchedulerConfig(type="asha", grace_period=1, reduction_factor=3, max_t=None)
    assert config.resources_per_trial == Resources(cpu=1, gpu=0)
    assert config.storage == "runs"
    assert config.address is None
    assert config.points_to_evaluate == []
    assert config.max_failures == 2
    assert config.keep_checkpoints_per_trial == 2


def test_without_a_metric_the_loss_is_minimized():
    config = _load(None)
    assert (config.metric, config.mode) == ("eval_loss", "min")


def test_greater_is_better_sets_the_default_mode():
    config = _load(None, metric_for_best_model="perplexity", greater_is_better=False)
    assert (config.metric, config.mode) == ("eval_perplexity", "min")


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("accuracy", ("eval_accuracy", "max")), ("eval_f1", ("eval_f1", "max")), ("val_loss", ("eval_val_loss", "min"))],
)
def test_a_metric_without_a_mode_takes_the_mode_from_its_name(metric, expected):
    config = _load({"metric": metric})
    assert (config.metric, config.mode) == expected


def test_a_mode_without_a_metric_keeps_the_runs_metric():
    config = _load({"mode": "max"}, metric_for_best_model="accuracy")
    assert (config.metric, config.mode) == ("eval_accuracy", "max")


def test_built_directly_the_objective_falls_back_on_the_arguments():
    assert SearchConfig().objective(_args(metric_for_best_model="accuracy")) == ("eval_accuracy", "max")
    assert SearchConfig(metric="loss").objective(_args(metric_for_best_model="accuracy")) == ("eval_loss", "min")
    assert (SearchConfig(metric="loss").metric, SearchConfig(metric="loss").mode) == ("eval_loss", "min")


# --- one rule each ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backend": "rey"}, "`search.backend` is 'rey', but must be one of ray | optuna (did you mean `ray`?)"),
        ({"num_trials": 0}, "`search.num_trials` is 0, but must be >= 1"),
        ({"num_trials": True}, "`search.num_trials` is True, but must be an integer"),
        ({"num_trials": 2.5}, "`search.num_trials` is 2.5, but must be an integer"),
        ({"num_trials": "8"}, "`search.num_trials` is '8', but must be an integer"),
        ({"max_concurrent_trials": 0}, "`search.max_concurrent_trials` is 0, but must be >= 1"),
        ({"time_budget_s": 0}, "`search.time_budget_s` is 0, but must be > 0 (seconds), or null"),
        ({"time_budget_s": float("inf")}, "`search.time_budget_s` is inf, but must be a finite number"),
        ({"time_budget_s": "soon"}, "`search.time_budget_s` is 'soon', but must be a number"),
        ({"sampler": "tpd"}, "`search.sampler` is 'tpd', but must be one of tpe | nsga2 | random | gp | cmaes | grid"),
        ({"seed": -1}, "`search.seed` is -1, but must be >= 0"),
        ({"seed": 2**32}, "`search.seed` is 4294967296, but must be <= 4294967295"),
        ({"seed": False}, "`search.seed` is False, but must be an integer"),
        ({"metric": ""}, "`search.metric` is '', but must name an evaluation metric"),
        ({"mode": "maximize"}, "`search.mode` is 'maximize', but must be one of max | min"),
        ({"storage": ""}, "`search.storage` is '', but must be a directory or a URI"),
        ({"storage": 3}, "`search.storage` is 3, but must be a directory or a URI"),
        ({"address": "localhost"}, "`search.address` is 'localhost', but must be auto or host:port"),
        ({"address": "h:70000"}, "`search.address` is 'h:70000', but must be auto"),
        ({"address": "ray://h:10001"}, "`search.address` is 'ray://h:10001', but Ray Client (ray://) is not supported"),
        ({"max_failures": -1}, "`search.max_failures` is -1, but must be >= 0"),
        ({"keep_checkpoints_per_trial": 0}, "`search.keep_checkpoints_per_trial` is 0, but must be >= 1"),
        ({"num_trial": 4}, "`search.num_trial` is not a search key (did you mean `num_trials`?)"),
    ],
)
def test_each_rule_names_its_key(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(raw)


def test_the_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"^`search` is \['ray'\] \(list\), but must be a mapping with keys backend"):
        _load(["ray"])


def test_numbers_yaml_reads_as_strings_are_numbers():
    config = _load(yaml.safe_load("{time_budget_s: 1e3, resources_per_trial: {gpu: 5e-1}}"))
    assert config.time_budget_s == 1000.0
    assert config.resources_per_trial.gpu == 0.5


def test_every_problem_is_reported_in_one_message():
    raw = {"num_trials": 0, "sampler": "grid", "scheduler": {"grace_period": 0}, "seed": "x", "colour": "red"}
    with pytest.raises(ConfigError) as caught:
        _load(raw)
    problems = str(caught.value).split("; ")
    assert len(problems) == 5, problems
    assert "\n" not in str(caught.value)
    for key in ("colour", "num_trials", "seed", "scheduler.grace_period", "sampler"):
        assert any(problem.startswith(f"`search.{key}`") for problem in problems), key


def test_where_prefixes_every_path():
    with pytest.raises(ConfigError, match=r"^`experiment\.search\.num_trials` is 0"):
        SearchConfig.from_dict({"num_trials": 0}, space=_space(), args=_args(), where="experiment.search")


# --- conflicts with the run -------------------------------------------------------------------------------------


def test_a_search_needs_evaluations():
    with pytest.raises(ConfigError, match=r"`search` judges trials by their evaluations, but `train.eval_strategy`"):
        SearchConfig.from_dict({}, space=_space(), args=TrainingArguments())
    space = _space({**SPACE, "eval_strategy": {"type": "categorical", "choices": ["epoch", "steps"]}})
    SearchConfig.from_dict({}, space=space, args=TrainingArguments())  # the space sets it


def test_the_search_metric_and_mode_win_over_the_runs():
    config = _load({"metric": "loss"}, metric_for_best_model="accuracy")
    assert (config.metric, config.mode) == ("eval_loss", "min")
    config = _load({"mode": "min"}, metric_for_best_model="error")  # the run guessed greater_is_better=true
    assert (config.metric, config.mode) == ("eval_error", "min")


def test_a_gpu_cannot_go_with_use_cpu():
    with pytest.raises(ConfigError, match=r"`search.resources_per_trial.gpu` is 0.5, but `train.use_cpu` is true"):
        _load({"resources_per_trial": {"gpu": 0.5}}, use_cpu=True)


def test_an_address_needs_the_ray_backend():
    with pytest.raises(ConfigError, match=r"`search.address` names a Ray cluster, but the backend is optuna"):
        _load({"backend": "optuna", "address": "auto"})
    for address in ("auto", "10.0.0.1:6379", "head-node:6379", "[::1]:6379"):
        assert _load({"address": address}).address == address


# --- scheduler --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scheduler: none", SchedulerConfig(type="none")),
        ("scheduler: no", SchedulerConfig(type="none")),
        ("scheduler: false", SchedulerConfig(type="none")),
        ("scheduler: asha", SchedulerConfig()),
        ("scheduler: null", SchedulerConfig()),
        ("{}", SchedulerConfig()),
        ("scheduler: {grace_period: 2}", SchedulerConfig(grace_period=2)),
        (
            "scheduler: {type: asha, grace_period: 1, reduction_factor: 2.5, max_t: 10}",
            SchedulerConfig(grace_period=1, reduction_factor=2.5, max_t=10),
        ),
        ("scheduler: {type: none}", SchedulerConfig(type="none")),
    ],
)
def test_scheduler_forms(text, expected):
    assert _load(yaml.safe_load(text)).scheduler == expected


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ("hyperband", "`search.scheduler` is 'hyperband': successive halving that pauses trials at rungs and "),
        ({"type": "hyperband"}, "`search.scheduler.type` is 'hyperband': successive halving that pauses trials"),
        (True, "`search.scheduler` is True, but must be asha, pbt, none, or a mapping"),
        (3, "`search.scheduler` is 3, but must be asha, pbt, none, or a mapping"),
        ({"type": "ahsa"}, "`search.scheduler.type` is 'ahsa', but must be one of asha | pbt | none (did you mean"),
        ({"grace_period": 0}, "`search.scheduler.grace_period` is 0, but must be >= 1"),
        ({"reduction_factor": 1.5}, "`search.scheduler.reduction_factor` is 1.5, but must be >= 2"),
        ({"reduction_factor": True}, "`search.scheduler.reduction_factor` is True, but must be a number"),
        ({"max_t": 0}, "`search.scheduler.max_t` is 0, but must be >= 1"),
        ({"grace_period": 4, "max_t": 3}, "`search.scheduler.grace_period` is 4, but must be <= max_t (3)"),
        ({"grace": 1}, "`search.scheduler.grace` is not a scheduler key (did you mean `grace_period`?)"),
        ({"type": "none", "max_t": 3}, "`search.scheduler.max_t` applies only to the asha scheduler, but type is none"),
    ],
)
def test_scheduler_rules(scheduler, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"scheduler": scheduler})


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        (
            {"type": "pbt", "grace_period": 2},
            "`search.scheduler.grace_period` applies only to the asha scheduler, but type i",
        ),
        ({"perturbation_interval": 3}, "`search.scheduler.perturbation_interval` applies only to the pbt scheduler"),
        (
            {"type": "pbt", "perturbation_interval": 0},
            "`search.scheduler.perturbation_interval` is 0, but must be >= 1",
        ),
        (
            {"type": "pbt", "quantile_fraction": 0.6},
            "`search.scheduler.quantile_fraction` is 0.6, but must be in (0, 0.5]",
        ),
        ({"type": "pbt", "quantile_fraction": 0}, "`search.scheduler.quantile_fraction` is 0, but must be in (0, 0.5]"),
        (
            {"type": "pbt", "resample_probability": 2},
            "`search.scheduler.resample_probability` is 2, but must be in [0, 1]",
        ),
        (
            {"type": "pbt", "hyperparam_mutations": "lr"},
            "hyperparam_mutations` names 'lr', which is not a param of the space",
        ),
        (
            {"type": "pbt", "hyperparam_mutations": [1]},
            "hyperparam_mutations` is [1] (list), but must be a list of names",
        ),
        (
            {"type": "pbt", "hyperparam_mutations": ["optim"]},
            "mutations` names 'optim', which a trial cannot change as it trains",
        ),
        ({"promote": "yes"}, "`search.scheduler.promote` is 'yes', but must be true or false"),
    ],
)
def test_pbt_and_promotion_rules(scheduler, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"scheduler": scheduler})


def test_pbt_and_a_pausing_asha_need_the_ray_backend_and_one_worker_a_trial():
    pausing = (
        ({"type": "pbt"}, "`search.scheduler.type` is pbt"),
        ({"promote": True}, "`search.scheduler.promote` is true"),
    )
    for scheduler, key in pausing:
        with pytest.raises(ConfigError, match=re.escape(f"{key}, which")) as caught:
            _load({"scheduler": scheduler, "backend": "optuna"})
        assert "only the ray backend does that (use backend: ray)" in str(caught.value)
        with pytest.raises(ConfigError, match="a data-parallel trial cannot be paused or moved yet; use workers: 1"):
            _load({"scheduler": scheduler, "resources_per_trial": {"workers": 2}})


def test_pbt_refuses_a_mutation_whose_when_children_a_trial_cannot_change():
    space = SearchSpace.from_mapping(
        {
            "learning_rate": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
            "schedule_kind": {"type": "categorical", "choices": ["a", "b"]},
            "warmup_steps": {"type": "int", "low": 0, "high": 10, "when": {"schedule_kind": "b"}},
        }
    )
    message = "`search.scheduler.hyperparam_mutations` changes 'warmup_steps' (its `when:` names a mutated param)"
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"scheduler": {"type": "pbt", "hyperparam_mutations": ["schedule_kind"]}}, space=space)


def test_pbt_perturbs_the_spaces_optimizer_settings_by_default_and_refuses_a_space_without_any():
    config = _load({"scheduler": {"type": "pbt", "quantile_fraction": 0.5}})
    assert config.scheduler.to_dict() == {
        "type": "pbt", "perturbation_interval": 2, "burn_in_period": 0, "quantile_fraction": 0.5,
        "resample_probability": 0.25, "hyperparam_mutations": [],
    }  # fmt: skip
    assert SearchConfig.from_dict(config.to_dict(), space=_space(), args=_args()) == config
    space = SearchSpace.from_mapping({"hidden": {"type": "int", "low": 4, "high": 8}})
    message = "`search.scheduler.hyperparam_mutations` is empty, and the space has no param PBT can change by default"
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"scheduler": "pbt"}, space=space)


def test_max_t_defaults_to_the_runs_budget_in_evaluations():
    assert SchedulerConfig().resolved_max_t(12) == 12
    assert SchedulerConfig(max_t=5).resolved_max_t(12) == 5
    with pytest.raises(ConfigError, match=r"`search.scheduler.grace_period` is 4, but a run has only 3 evaluations"):
        SchedulerConfig(grace_period=4).resolved_max_t(3)


# --- resources --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", [0, 0.25, 1, 2, 4.0])
def test_gpus_are_a_fraction_or_whole(gpu):
    assert _load({"resources_per_trial": {"gpu": gpu}}).resources_per_trial.gpu == gpu


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"gpu": 1.5}, "`search.resources_per_trial.gpu` is 1.5, but must be a fraction in (0, 1]"),
        ({"gpu": -1}, "`search.resources_per_trial.gpu` is -1, but must be >= 0"),
        ({"cpu": 0}, "`search.resources_per_trial.cpu` is 0, but must be > 0"),
        ({"GPU": 1}, "`search.resources_per_trial.GPU` is not a resource key (did you mean `gpu`?)"),
        ({"memory": 1}, "`search.resources_per_trial.memory` is not a resource key"),
        ("gpu", "`search.resources_per_trial` is 'gpu', but must be a mapping such as {cpu: 1, gpu: 0.5}"),
        ({"workers": 0}, "`search.resources_per_trial.workers` is 0, but must be >= 1"),
        ({"workers": "two"}, "`search.resources_per_trial.workers` is 'two', but must be an integer"),
        ({"workers": 2, "gpu": 0.5}, "`search.resources_per_trial.gpu` is 0.5, but with workers: 2 each worker needs"),
    ],
)
def test_resource_rules(resources, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"resources_per_trial": resources})


def test_workers_are_processes_per_trial_each_with_its_cpus_and_gpus():
    config = _load({"resources_per_trial": {"workers": 2, "cpu": 1, "gpu": 1}})
    assert config.resources_per_trial == Resources(cpu=1, gpu=1, workers=2)
    assert config.to_dict()["resources_per_trial"] == {"cpu": 1, "gpu": 1, "workers": 2}
    assert _load(None).resources_per_trial.workers == 1


def test_workers_need_the_ray_backend():
    with pytest.raises(
        ConfigError, match=re.escape("`search.resources_per_trial.workers` is 2, but the optuna backend")
    ):
        _load({"backend": "optuna", "resources_per_trial": {"workers": 2}})


@pytest.mark.parametrize(
    ("nodes", "fits"),
    [
        ([{"CPU": 2}], True),  # both workers on one node
        ([{"CPU": 1}, {"CPU": 1}], True),  # one on each node, as Ray Train may place them
        ([{"CPU": 1.5}, {"CPU": 0.5}], False),  # 2 CPUs in all, but only one node holds a whole worker
        ([{"CPU": 4, "GPU": 1}], False),  # a GPU each: one GPU holds one worker
        ([{"CPU": 4, "GPU": 1}, {"CPU": 1, "GPU": 1}], True),
    ],
)
def test_a_trial_fits_when_the_nodes_together_hold_its_workers(monkeypatch, nodes, fits):
    from tunetrain.tuning.ray import cluster

    monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True, "Resources": n} for n in nodes])
    gpu = 1 if any("GPU" in n for n in nodes) else 0
    if fits:
        cluster.check_workers_fit(2, 1, gpu, "`search.resources_per_trial` asks for")
    else:
        with pytest.raises(
            ConfigError, match=r"asks for 2 workers of 1 CPU \+ \d GPU each, but the Ray cluster's nodes"
        ):
            cluster.check_workers_fit(2, 1, gpu, "`search.resources_per_trial` asks for")


# --- points to evaluate -----------------------------------------------------------------------------------------


def test_points_to_evaluate_are_checked_and_normalized_by_the_space():
    points = [{"learning_rate": 1.0e-3, "layers": 2.0, "optim": "sgd", "momentum": 0.9}, {"optim": "adamw"}]
    config = _load({"points_to_evaluate": points})
    assert config.points_to_evaluate == [
        {"learning_rate": 1.0e-3, "layers": 2, "optim": "sgd", "momentum": 0.9},
        {"optim": "adamw"},  # a partial point: the rest is sampled
    ]
    assert type(config.points_to_evaluate[0]["layers"]) is int


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([{"layers": 9}], "`search.points_to_evaluate[0].layers` is 9, but must be in [1, 4]"),
        (
            [{"layers": 1}, {"optim": "adamw", "momentum": 0.9}],
            "`search.points_to_evaluate[1].momentum` is given, but momentum is only used when optim is 'sgd'",
        ),
        ([{"lr": 0.1}], "`search.points_to_evaluate[0].lr` is not a param of the search space"),
        ([3], "`search.points_to_evaluate[0]` is 3, but must be a mapping of param name -> value"),
        ({"layers": 2}, "`search.points_to_evaluate` is {'layers': 2} (dict), but must be a list"),
    ],
)
def test_points_to_evaluate_rules(points, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"points_to_evaluate": points})


def test_no_more_points_than_trials():
    with pytest.raises(ConfigError, match=r"`search.points_to_evaluate` has 3 points, but num_trials is 2"):
        _load({"num_trials": 2, "points_to_evaluate": [{"layers": n} for n in (1, 2, 3)]})


# --- samplers ---------------------------------------------------------------------------------------------------


def test_grid_over_a_continuous_param_names_the_sampler_and_the_param():
    message = "`search.sampler` is 'grid', which cannot search this space: `space.learning_rate`: the grid sampler"
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"sampler": "grid"})
    config = SearchConfig(sampler="grid")  # built directly: the space is only seen by make_sampler
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_sampler(config, _space())


def test_grid_with_more_trials_than_points_is_accepted():
    assert _load({"sampler": "grid", "num_trials": 100}, space=_space(GRID_SPACE)).num_trials == 100


def test_a_sampler_whose_package_is_missing_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cmaes" else real_find_spec(name, *a)
    )
    message = "`search.sampler` is 'cmaes', which needs the `cmaes` package: pip install cmaes"
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load({"sampler": "cmaes"})
    with pytest.raises(ConfigError, match=re.escape(message)):
        SearchConfig(sampler="cmaes")


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("gp", optuna.samplers.GPSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("grid", optuna.samplers.GridSampler),
    ],
)
def test_make_sampler_returns_the_named_sampler(sampler, cls, monkeypatch):
    # CmaEsSampler imports `cmaes` only when it samples, so it can be built here whether or not it is installed
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real_find_spec(name, *a) or name == "cmaes")
    space = _space(GRID_SPACE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's ExperimentalWarning stays inside make_sampler
        made = make_sampler(_load({"sampler": sampler}, space=space), space)
    assert isinstance(made, cls)


def test_tpe_groups_conditional_params_and_lies_only_for_concurrent_trials():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conditional = make_sampler(_load({}), _space())
        plain = make_sampler(_load({"max_concurrent_trials": 1}, space=_space(GRID_SPACE)), _space(GRID_SPACE))
    assert (conditional._group, conditional._constant_liar) == (True, True)
    assert (plain._group, plain._constant_liar) == (False, False)


def test_the_seed_makes_sampling_repeatable():
    def sample(seed: int) -> list[dict]:
        space = _space()
        study = optuna.create_study(sampler=make_sampler(_load({"sampler": "random", "seed": seed}), space))
        study.optimize(lambda trial: float(len(space.sample(trial))), n_trials=3)
        return [trial.params for trial in study.trials]

    assert sample(1) == sample(1) != sample(2)


def test_the_grid_sampler_stops_an_optimize_loop_and_lets_ask_and_tell_go_on():
    space = _space(GRID_SPACE)
    config = _load({"sampler": "grid", "num_trials": 6}, space=space)
    study = optuna.create_study(sampler=make_sampler(config, space))
    study.optimize(lambda trial: float(space.sample(trial)["layers"]), n_trials=config.num_trials)
    assert len(study.trials) == 4  # the grid has 2 x 2 points

    # Ray's OptunaSearch drives the study by ask and tell, where Optuna's own GridSampler raises on the last tell
    study = optuna.create_study(sampler=make_sampler(config, space))
    for _ in range(5):
        trial = study.ask()
        study.tell(trial, float(space.sample(trial)["layers"]))
    assert len({tuple(trial.params.items()) for trial in study.trials}) == 4


def test_the_grid_sampler_pickles():
    space = _space(GRID_SPACE)
    sampler = make_sampler(_load({"sampler": "grid"}, space=space), space)
    assert type(pickle.loads(pickle.dumps(sampler))) is type(sampler)
    assert type(sampler).__module__ == components_module.__name__


# --- storage ----------------------------------------------------------------------------------------------------


def test_a_local_storage_is_an_absolute_path_on_the_local_filesystem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filesystem, path = resolve_storage("runs")
    assert isinstance(filesystem, fs.LocalFileSystem)
    assert path == str(tmp_path / "runs")
    assert resolve_storage("~/runs")[1] == os.path.expanduser("~/runs")


def test_a_file_uri_opens_the_local_filesystem(tmp_path):
    filesystem, path = resolve_storage(f"file://{tmp_path}/runs")
    assert isinstance(filesystem, fs.LocalFileSystem)
    assert path == f"{tmp_path}/runs"


def test_a_uri_pyarrow_cannot_open_is_one_line_naming_the_key():
    message = "`search.storage` is 'nosuchscheme://x', but pyarrow cannot open it: Unrecognized filesystem type"
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        resolve_storage("nosuchscheme://x")
    assert "\n" not in str(caught.value)


def test_storage_is_only_checked_for_its_form_when_loading():
    assert _load({"storage": "nosuchscheme://x"}).storage == "nosuchscheme://x"
    assert _load({"storage": Path("shared/runs")}).storage == "shared/runs"


# --- round trips, direct construction, CLI overrides ------------------------------------------------------------


def test_to_dict_round_trips_through_yaml():
    raw = {
        "backend": "optuna",
        "metric": "accuracy",
        "num_trials": 8,
        "max_concurrent_trials": 1,
        "time_budget_s": 60,
        "sampler": "random",
        "seed": 7,
        "scheduler": {"grace_period": 2, "reduction_factor": 2, "max_t": 9},
        "resources_per_trial": {"cpu": 2, "gpu": 0.5},
        "storage": "file:///tmp/runs",
        "points_to_evaluate": [{"learning_rate": 0.01, "optim": "adamw"}],
        "max_failures": 0,
        "keep_checkpoints_per_trial": 3,
    }
    for config in (_load(raw), _load({"scheduler": "none"}), _load(None)):
        text = yaml.safe_dump(config.to_dict())
        assert _load(yaml.safe_load(text)) == config


def test_building_directly_checks_each_value():
    with pytest.raises(ConfigError, match=r"`search.num_trials` is 0, but must be >= 1"):
        SearchConfig(num_trials=0)
    with pytest.raises(ConfigError, match=r"`search.scheduler.reduction_factor` is 1, but must be >= 2"):
        SchedulerConfig(reduction_factor=1)
    with pytest.raises(ConfigError, match=r"`search.resources_per_trial.gpu` is 2.5, but must be a fraction"):
        Resources(gpu=2.5)
    assert SearchConfig(scheduler="none").scheduler == SchedulerConfig(type="none")
    with pytest.raises(AttributeError):
        SearchConfig().num_trials = 3  # frozen


def test_cli_overrides_merge_into_the_raw_section():
    raw = {"num_trials": 4, "resources_per_trial": {"cpu": 2}}
    merged = with_cli_overrides(raw, backend="optuna", num_trials=8, storage="s3://b/runs", gpus_per_trial=0.5)
    assert merged == {
        "backend": "optuna",
        "num_trials": 8,
        "storage": "s3://b/runs",
        "resources_per_trial": {"cpu": 2, "gpu": 0.5},
    }
    assert raw == {"num_trials": 4, "resources_per_trial": {"cpu": 2}}  # not changed
    assert with_cli_overrides(None, address="auto") == {"address": "auto"}
    assert with_cli_overrides(None) == {}
    with pytest.raises(ConfigError, match=r"`search.num_trials` is 0, but must be >= 1"):
        _load(with_cli_overrides(raw, num_trials=0))


def test_an_int_past_the_float_range_is_not_a_finite_number():
    message = r"`search.time_budget_s` is an integer of about 401 digits, but must be a finite number"
    with pytest.raises(ConfigError, match=message):  # not an OverflowError
        _load({"time_budget_s": 10**400})
    assert _load({"resources_per_trial": {"cpu": 10**30}}).resources_per_trial.cpu == 10**30  # an int stays an int


def test_a_ray_client_address_in_the_environment_is_refused_as_in_the_file(monkeypatch):
    from tunetrain.tuning.ray.cluster import cluster_address

    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(ConfigError, match=r"^RAY_ADDRESS is 'ray://head:10001', but Ray Client \(ray://\) is not"):
        cluster_address(_load({}))
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert cluster_address(_load({})) == "head:6379"
    assert cluster_address(_load({"address": "other:6379"})) == "other:6379"


def test_eval_on_start_is_refused_for_a_search_and_kept_for_a_single_run():
    with pytest.raises(ConfigError, match=r"but `train.eval_on_start` is true: a look at the untrained model is no"):
        _load({}, eval_on_start=True)
    from tunetrain.experiment import experiment_from_dict

    experiment = experiment_from_dict({"name": "x", "task": "m:t", "train": {"eval_on_start": True,
                                       "eval_strategy": "epoch"}, "space": {"lr": {"type": "float", "low": 0.1,
                                       "high": 0.2}}, "search": {"num_trials": 2}})  # fmt: skip
    assert experiment.train.eval_on_start  # `tunetrain train` of the same file keeps it


# --- several objectives ------------------------------------------------------------------------------------------


def test_several_objectives_are_lists_of_metrics_and_modes():
    config = _load({"metric": ["accuracy", "num_parameters"], "mode": ["max", "min"]})
    assert config.metric == ("eval_accuracy", "eval_num_parameters") and config.mode == ("max", "min")
    assert config.metrics == config.metric and config.modes == config.mode and config.multi_objective
    assert _load(config.to_dict()) == config  # lists in the file, tuples in the config
    assert yaml.safe_load(yaml.safe_dump(config.to_dict()))["metric"] == ["eval_accuracy", "eval_num_parameters"]
    # without modes, each from its metric's name: sizes, runtimes and losses are minimized
    guessed = _load({"metric": ["accuracy", "num_parameters", "eval_runtime", "loss"]})
    assert guessed.modes == ("max", "min", "min", "min")
    one = _load({"metric": ["accuracy"], "mode": ["max"]})  # a list of one is the search of one metric
    assert (one.metric, one.mode, one.multi_objective) == ("eval_accuracy", "max", False)
    assert one.metrics == ("eval_accuracy",)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metric": ["accuracy", "num_parameters"], "mode": ["max"]},
         "`search.mode` has 1 modes, but `search.metric` names 2 metrics"),
        ({"metric": ["num_parameters", "accuracy"], "mode": ["min", "max"]},
         "`search.metric[0]` is eval_num_parameters, but the first objective chooses each trial's best checkpoint"),
        ({"metric": ["eval_runtime", "accuracy"]}, "put a metric training improves first, such as [accuracy, runtime]"),
        ({"metric": ["accuracy", "num_parameters"], "mode": []}, "`search.mode` is an empty list"),
        ({"metric": ["accuracy", "num_parameters", "loss"], "mode": ["max", "min"]},
         "`search.mode` has 2 modes, but `search.metric` names 3 metrics"),
        ({"metric": ["accuracy", "num_parameters"], "mode": "max"},
         "`search.mode` is 'max', but `search.metric` names 2 metrics: give a mode for each, such as [max, min]"),
        ({"metric": "accuracy", "mode": ["max", "min"]},
         "`search.mode` is a list of 2, but `search.metric` names one metric"),
        ({"metric": ["accuracy", "accuracy"]}, "`search.metric` names a metric twice"),
        ({"metric": ["accuracy", 3]}, "`search.metric[1]` is 3, but must name an evaluation metric"),
        ({"metric": []}, "`search.metric` is an empty list"),
        ({"metric": ["accuracy", "loss"], "mode": ["max", "up"]}, "`search.mode[1]` is 'up', but must be one of"),
        ({"metric": ["accuracy", "num_parameters"], "sampler": "cmaes"},
         "`search.metric` names 2 metrics (several objectives), but `search.sampler` is 'cmaes', which optimizes one"),
        ({"metric": ["accuracy", "num_parameters"], "scheduler": "pbt"},
         "`search.scheduler` is pbt, which ranks trials by one: use asha"),
        ({"metric": ["accuracy", "num_parameters"], "scheduler": {"type": "asha", "promote": True}},
         "`search.scheduler` is asha with promote: true, which ranks trials by one"),
    ],
)  # fmt: skip
def test_several_objectives_are_checked_with_one_line_each(raw, message, monkeypatch):
    monkeypatch.setattr(components_module, "SAMPLER_PACKAGES", {})  # cmaes need not be installed to be refused
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(raw, metric_for_best_model="accuracy")


def test_every_sampler_but_cmaes_takes_several_objectives():
    for sampler in ("tpe", "nsga2", "random", "gp", "grid"):
        space = _space(GRID_SPACE) if sampler == "grid" else _space()
        config = _load({"metric": ["accuracy", "num_parameters"], "sampler": sampler}, space=space)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(config, space))
        for _ in range(3):
            trial = study.ask()
            space.sample(trial)
            study.tell(trial, [0.5, 100.0])
        assert len(study.best_trials) >= 1
