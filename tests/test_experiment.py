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
    assert experiment.training_arguments().output_dir == str(Path("runs") / "y")


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
    assert experiment.train.output_dir == str(Path("runs") / "typed")
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
