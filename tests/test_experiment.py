"""The experiment file: every ready file loads; bad files fail with every problem named together."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from tunetrain import ConfigError, Experiment, TrainingArguments, load_experiment
from tunetrain.experiment import apply_overrides, experiment_from_dict
from tunetrain.tuning.config import SearchConfig

SEARCH_SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_the_ready_files_are_there():
    names = {p.name for p in SEARCH_SPACES}
    assert {"quickstart.yaml", "mnist1d_mlp.yaml", "mnist1d_cnn.yaml"} <= names


@pytest.mark.parametrize("path", SEARCH_SPACES, ids=lambda p: p.name)
def test_every_ready_file_loads_and_builds(path):
    experiment = load_experiment(path)
    args = experiment.training_arguments(output_dir="/tmp/unused")
    assert args.output_dir == "/tmp/unused"
    params, how = experiment.space.defaults()
    assert experiment.space.validate(params) == params
    assert set(how) == set(params)
    from tunetrain import load_task

    task = load_task(experiment.task)
    model = task.model_init({k: v for k, v in params.items() if k not in args.to_dict()})
    assert sum(p.numel() for p in model.parameters()) > 0
    # torchtune's habit: every ready file starts with the command that runs it
    assert path.read_text().startswith("# tunetrain ")


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_overrides_set_nested_keys_with_yaml_values(tmp_path):
    path = _file(tmp_path, "name: x\ntask: tiny_task:task\ntrain: {num_train_epochs: 2}\n")
    experiment = load_experiment(path, ["train.num_train_epochs=5", "train.learning_rate=1e-3", "name=y"])
    assert experiment.sections["train"] == {"num_train_epochs": 5, "learning_rate": "1e-3"}
    assert experiment.training_arguments().learning_rate == 0.001
    assert experiment.name == "y"
    # beside the search's runs/y, never in it (before: runs/y, which `search --restart` deleted)
    assert experiment.training_arguments().output_dir == str(Path("runs") / "y-train")


def test_relative_paths_in_a_file_are_relative_to_the_file_and_those_given_with_set_to_the_cwd(tmp_path, monkeypatch):
    # before: a relative task path resolved against the current directory, and every Ray trial failed on it
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "exp.yaml"
    path.write_text(
        "name: x\ntask: tasks/mine.py:task\ntrain: {output_dir: out, logging_dir: ../logs}\n"
        "space: {lr: {type: float, low: 0.1, high: 0.2}}\nsearch: {storage: runs}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    experiment = load_experiment(path)
    assert experiment.task == f"{folder / 'tasks' / 'mine.py'}:task"
    args = experiment.training_arguments()
    assert args.output_dir == str(folder / "out") and args.logging_dir == str(folder / ".." / "logs")
    assert experiment.search.storage == str(folder / "runs")
    overridden = load_experiment(path, ["search.storage=mine", "train.output_dir=/abs/out"])
    assert overridden.search.storage == str(elsewhere / "mine")  # --set: where the command runs
    assert overridden.training_arguments().output_dir == "/abs/out"
    module = _file(tmp_path, "name: x\ntask: pkg.mod:task\nsearch: {storage: 's3://bucket/runs'}\n")
    assert load_experiment(module).task == "pkg.mod:task"  # a module and a URI are not paths here
    assert load_experiment(module).sections["search"]["storage"] == "s3://bucket/runs"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.num_train_epochs"], "must look like section.key=value"),
        (["trian.x=1"], r"'trian' is not a section \(did you mean `train`"),
        (["train.num_train_epochs.deep=1"], "'num_train_epochs' is not a mapping"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides({"name": "x", "train": {"num_train_epochs": 2}}, overrides)


def test_all_problems_are_reported_together():
    raw = {
        "name": "bad name!",
        "task": "nocolon",
        "trian": {},
        "train": {"learning_rat": 0.1},
        "space": {"lr": {"type": "float", "low": 1, "high": 0}},
    }
    with pytest.raises(ConfigError) as caught:
        experiment_from_dict(raw)
    message = str(caught.value)
    assert "\n" not in message
    for part in ("`trian` is not an experiment key", "`name` is 'bad name!'", "`task` is 'nocolon'",
                 "`train.learning_rat` is not a TrainingArguments field", "`space.lr"):  # fmt: skip
        assert part in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\ntask: [unclosed\n", r"is not valid YAML \(line 3, column 1\)"),
        ("- just\n- a list\n", "must be a mapping with keys name, task"),
        ("name: x\ntask: a:b\ntrain: 3\n", "`train` is a int, but must be a mapping"),
        ("name: x\ntask: a:b\ntrain: {eval_strategy: epoch, load_best_model_at_end: true}\n", "needs save_strategy"),
        ("name: x\ntask: a:b\ntrain: {learning_rate: 0.1}\nspace: {learning_rate: {type: float, low: 0.1, high: 1}}\n",
         "`train.learning_rate` is fixed, but `space.learning_rate` searches it"),
    ],
)  # fmt: skip
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(_file(tmp_path, text))


def test_missing_file_and_round_trip(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    experiment = load_experiment(SEARCH_SPACES[0])
    again = experiment_from_dict(yaml.safe_load(yaml.safe_dump(experiment.to_dict(), sort_keys=False)))
    assert again.space == experiment.space
    assert again.train == experiment.train


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (10**400, r"`train.learning_rate` is an integer of about 401 digits, but must be a finite number"),
        (float("inf"), r"`train.learning_rate` is inf, but must be a finite number"),
        ("inf", r"`train.learning_rate` is 'inf' \(str\), but must be a float"),
    ],
)
def test_a_float_field_must_be_finite(value, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({"name": "x", "task": "a:b", "train": {"learning_rate": value}})


def test_every_section_is_parsed_and_checked(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: typed\ntask: tiny_task:task\n"
        "train: {num_train_epochs: 3, eval_strategy: epoch, metric_for_best_model: accuracy}\n"
        "space: {hidden: {type: int, low: 4, high: 32}}\nsearch: {num_trials: 5, sampler: random}\n"
    )
    experiment = load_experiment(path)
    assert isinstance(experiment.train, TrainingArguments) and experiment.train.num_train_epochs == 3
    assert experiment.train.output_dir == str(Path("runs") / "typed-train")
    assert isinstance(experiment.search, SearchConfig)
    assert (experiment.search.num_trials, experiment.search.sampler) == (5, "random")
    assert experiment.search.metric == "eval_accuracy"  # filled in from the train section
    assert experiment.to_dict()["search"] == {"num_trials": 5, "sampler": "random"}  # the file's own values


def test_a_bad_search_section_is_refused_by_every_command(tmp_path, capsys):
    from tunetrain.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text("name: typed\ntask: tiny_task:task\nparams: {hidden: 8}\nsearch: {num_trails: 4}\n")
    with pytest.raises(ConfigError, match=r"`search.num_trails` is not a search key \(did you mean `num_trials`\?\)"):
        load_experiment(path)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`search.num_trails`" in err[0]


def test_replace_checks_the_new_sections_again():
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1}}
    experiment = experiment_from_dict({"name": "x", "task": "m:t", "train": {"num_train_epochs": 2}, "space": space})
    longer = experiment.replace(train={"num_train_epochs": 5})
    assert (longer.train.num_train_epochs, experiment.train.num_train_epochs) == (5, 2)
    with pytest.raises(ConfigError, match=r"`train.learning_rate` is fixed, but `space.learning_rate` searches it"):
        experiment.replace(train={"learning_rate": 0.1})


def test_an_experiment_built_by_hand_must_hold_parsed_sections():
    with pytest.raises(ConfigError, match=r"`Experiment.train` is \{'num_train_epochs': 2\} \(dict\), but must be a "):
        Experiment(name="x", task="m:t", train={"num_train_epochs": 2})
    built = Experiment(name="x", task="m:t", train=TrainingArguments(num_train_epochs=2))
    assert built.to_dict() == {"name": "x", "task": "m:t", "train": {"num_train_epochs": 2}}


def test_a_search_section_is_checked_against_the_run_only_by_a_search(tmp_path):
    from tunetrain import search

    raw = {"name": "fit", "task": "m:t", "train": {"eval_strategy": "no"}, "search": {"num_trials": 2}}
    raw["space"] = {"learning_rate": {"type": "float", "low": 1e-4, "high": 0.1}}
    experiment = experiment_from_dict(raw)  # a final fit without evaluation: the search section is not run
    assert experiment.search.num_trials == 2
    with pytest.raises(ConfigError, match=r"`search` judges trials by their evaluations, but `train.eval_strategy`"):
        search(experiment, storage=str(tmp_path))
    assert not (tmp_path / "fit").exists()


# a valid spec for each field a search sets itself: refused for what it names, not for its values
SET_BY_THE_SEARCH = {
    "output_dir": {"type": "categorical", "choices": ["a", "b"]},
    "logging_dir": {"type": "categorical", "choices": ["a", "b"]},
    "report_to": {"type": "categorical", "choices": ["tensorboard", "none"]},
    "disable_tqdm": {"type": "categorical", "choices": [True, False]},
    "save_strategy": {"type": "categorical", "choices": ["steps", "epoch"]},
    "save_steps": {"type": "int", "low": 10, "high": 100},
    "save_total_limit": {"type": "int", "low": 1, "high": 3},
    "load_best_model_at_end": {"type": "categorical", "choices": [True, False]},
    "metric_for_best_model": {"type": "categorical", "choices": ["loss", "accuracy"]},
    "greater_is_better": {"type": "categorical", "choices": [True, False]},
}


@pytest.mark.parametrize("name", sorted(SET_BY_THE_SEARCH))
def test_a_field_the_search_sets_for_each_trial_cannot_be_searched(name):
    raw = {"name": "x", "task": "m:t", "space": {name: SET_BY_THE_SEARCH[name]}}
    with pytest.raises(ConfigError, match=rf"^`space.{name}` is not a hyperparameter: .+; remove it from the space"):
        experiment_from_dict(raw)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"num_train_epochs": {"type": "categorical", "choices": ["two", "three"]}},
         r"`space.num_train_epochs.choices` is 'two' \(str\), but must be a float"),
        ({"learning_rate": {"type": "categorical", "choices": [0.1, "fast"]}},
         r"`space.learning_rate.choices` is 'fast' \(str\), but must be a float"),
        ({"per_device_train_batch_size": {"type": "float", "low": 8, "high": 64}},
         r"`space.per_device_train_batch_size` is a float param, but TrainingArguments.per_device_train_batch_size "
         r"is an int: use type: int"),
        ({"max_steps": {"type": "categorical", "choices": [10, 2.5]}},
         r"`space.max_steps.choices` is 2.5 \(float\), but must be a int"),
        ({"fp16": {"type": "int", "low": 0, "high": 1}}, r"`space.fp16.low` is 0 \(int\), but must be a bool"),
        ({"optim": {"type": "categorical", "choices": ["adamw", "adagrad"]}},
         r"`space.optim.choices` is 'adagrad', but must be one of adamw \| adamw_torch \| adamw_torch_fused \| adam "
         r"\| sgd"),
        ({"eval_strategy": {"type": "categorical", "choices": ["epoch", "often"]}},
         r"`space.eval_strategy.choices` is 'often', but must be one of no \| steps \| epoch"),
        ({"learning_rate": {"type": "float", "low": -0.1, "high": 0.1}},
         r"`space.learning_rate.low` is -0.1, but must be >= 0"),
        ({"per_device_train_batch_size": {"type": "int", "low": 0, "high": 64}},
         r"`space.per_device_train_batch_size.low` is 0, but must be >= 1"),
        ({"momentum": {"type": "float", "low": 0.5, "high": 1.5}}, r"`space.momentum.high` is 1.5, but must be in"),
    ],
)  # fmt: skip
def test_a_param_that_sets_a_training_argument_is_checked_against_that_field(spec, message):
    with pytest.raises(ConfigError, match=message):
        experiment_from_dict({"name": "x", "task": "m:t", "space": spec})


def test_params_that_set_training_arguments_in_their_fields_own_terms_load():
    space = {
        "num_train_epochs": {"type": "int", "low": 1, "high": 4},  # an int param for a float field
        "learning_rate": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "per_device_train_batch_size": {"type": "categorical", "choices": [8, 16.0]},  # a whole float is an int
        "eval_strategy": {"type": "categorical", "choices": [False, "epoch"]},  # YAML reads a bare `no` as false
        "eval_steps": {"type": "categorical", "choices": [None, 5]},  # a field that takes null
        "optim": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optim": "sgd"}},  # only with sgd
        "fp16": {"type": "categorical", "choices": [False, True]},
        "seed": {"type": "int", "low": 0, "high": 3},
        "hidden": {"type": "int", "low": 4, "high": 32},  # the model's, not a field: anything goes
    }
    experiment = experiment_from_dict({"name": "x", "task": "m:t", "space": space})
    assert experiment.space.names == list(space)


def test_every_problem_with_the_space_params_that_set_fields_is_reported_together():
    space = {
        "output_dir": {"type": "categorical", "choices": ["a", "b"]},
        "num_train_epochs": {"type": "categorical", "choices": ["two", "three"]},
        "fp16": {"type": "int", "low": 0, "high": 1},
    }
    with pytest.raises(ConfigError) as caught:
        experiment_from_dict({"name": "x", "task": "m:t", "space": space})
    message = str(caught.value)
    assert "\n" not in message
    for part in ("`space.output_dir` is not a hyperparameter", "`space.num_train_epochs.choices`", "`space.fp16.low`"):
        assert part in message


@pytest.mark.parametrize("name", sorted(SET_BY_THE_SEARCH))
def test_a_field_that_is_not_a_hyperparameter_is_refused_in_params_too(name):
    raw = {"name": "x", "task": "m:t", "params": {name: "anything"}}
    with pytest.raises(ConfigError, match=rf"^`params.{name}` is not a hyperparameter: set it under `train:`$"):
        experiment_from_dict(raw)


def test_params_that_set_fields_are_checked_against_them_at_load_and_the_others_go_to_the_task():
    params = {"learning_rate": "fast", "num_train_epochs": -1, "hidden_size": "whatever the factory takes"}
    with pytest.raises(ConfigError) as caught:
        experiment_from_dict({"name": "x", "task": "m:t", "params": params})
    message = str(caught.value)
    assert "\n" not in message and "hidden_size" not in message
    assert "`params.learning_rate` is 'fast' (str), but must be a float" in message
    assert "`params.num_train_epochs`" in message
    fine = experiment_from_dict({"name": "x", "task": "m:t", "params": {"learning_rate": 1, "hidden_size": 8}})
    assert fine.params == {"learning_rate": 1, "hidden_size": 8}


def test_training_arguments_check_value_uses_the_fields_own_rules():
    args = TrainingArguments(output_dir="/tmp/unused", max_steps=100)
    assert args.check_value("num_train_epochs", 2) == 2.0
    assert args.check_value("num_train_epochs", 0) == 0.0  # max_steps > 0: the epochs do not count here
    assert args.check_value("eval_strategy", False) == "no"
    with pytest.raises(ConfigError, match=r"^`space.seed` is 'x' \(str\), but must be a int$"):
        args.check_value("seed", "x", where="space.seed")
    with pytest.raises(ConfigError, match=r"^`lr_scheduler_type` is 'cyclic', but must be one of linear"):
        args.check_value("lr_scheduler_type", "cyclic")
    with pytest.raises(ConfigError, match=r"^`learning_rat` is not a TrainingArguments field \(did you mean"):
        args.check_value("learning_rat", 0.1)
    assert args.max_steps == 100 and args.num_train_epochs == 3.0  # the object itself is left as it was
    quiet = TrainingArguments(logging_strategy="no", logging_steps=0)  # eval_steps follows it: 0, never checked
    assert quiet.check_value("learning_rate", 0.1) == 0.1
    with pytest.raises(ConfigError, match=r"^`logging_strategy` is 'steps', which these arguments refuse: `logging_"):
        quiet.check_value("logging_strategy", "steps")
