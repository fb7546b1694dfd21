"""The Ray Tune backend, in one local Ray session (127.0.0.1, 2 CPUs) for the whole module."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from conftest import TESTS

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported: loopback only

from tunetrain import ConfigError, search
from tunetrain.experiment import experiment_from_dict
from tunetrain.results import read_history, read_results

pytestmark = pytest.mark.e2e

TINY = f"{TESTS / 'tiny_task.py'}:task"


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import logging

    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
        logging_level=logging.ERROR,
    )  # fmt: skip
    yield
    ray.shutdown()


def _experiment(tmp_path: Path, *, task: str = TINY, epochs: int = 6, **search_section):
    return experiment_from_dict(
        {
            "name": "tiny-search",
            "task": task,
            "train": {
                "num_train_epochs": epochs, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
                "logging_strategy": "no", "metric_for_best_model": "accuracy", "report_to": "tensorboard",
            },
            "space": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
                "hidden": {"type": "int", "low": 4, "high": 32},
            },
            "search": {
                "backend": "ray", "num_trials": 8, "max_concurrent_trials": 2, "storage": str(tmp_path), "seed": 0,
                "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2}, **search_section,
            },
        }
    )  # fmt: skip


def test_search_end_to_end_with_asha(tmp_path, monkeypatch):
    import optuna

    from tunetrain.tuning.ray import driver

    searchers = []
    original_init = driver.PrunedAwareOptunaSearch.__init__

    def capture(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        searchers.append(self)

    monkeypatch.setattr(driver.PrunedAwareOptunaSearch, "__init__", capture)
    result = search(_experiment(tmp_path))
    exp_dir = tmp_path / "tiny-search"
    assert result.experiment_dir == str(exp_dir)
    on_disk = read_results(exp_dir)
    assert len(on_disk.trials) == 8
    statuses = {t.trial_id: t.status for t in on_disk.trials}
    assert set(statuses.values()) <= {"completed", "pruned"}
    stopped = [t for t in on_disk.trials if t.status == "pruned"]
    assert stopped, "ASHA stopped no trial"
    assert all(t.evaluations < 6 for t in stopped)  # fewer evaluations than the budget
    assert all(t.evaluations == 6 for t in on_disk.trials if t.status == "completed")

    history = read_history(exp_dir)
    for trial in on_disk.trials:
        rows = [h for h in history if h["trial_id"] == trial.trial_id]
        assert [h["evaluation"] for h in rows] == list(range(1, trial.evaluations + 1))
        assert trial.best_metric == max(h["metric"] for h in rows)  # the objective is the best, not the last
        assert (Path(trial.best_checkpoint) / "model.safetensors").is_file()
        assert (exp_dir / "tensorboard" / trial.trial_id).is_dir()
    assert result.best.metric == max(t.best_metric for t in on_disk.trials)

    # what Optuna was told: ASHA-stopped trials PRUNED (with the value they were stopped at), the rest COMPLETE
    # with their best evaluation; results.parquet holds the same trials with the same params
    (searcher,) = searchers
    told = {trial_id: searcher._ot_trials[trial_id] for trial_id in statuses}
    study_trials = {t._trial_id: t for t in searcher._ot_study.get_trials(deepcopy=False)}
    for trial in on_disk.trials:
        frozen = study_trials[told[trial.trial_id]._trial_id]
        assert frozen.params == trial.params
        if trial.status == "pruned":
            assert frozen.state == optuna.trial.TrialState.PRUNED
            assert frozen.intermediate_values[trial.evaluations] == trial.best_metric
        else:
            assert frozen.state == optuna.trial.TrialState.COMPLETE
            assert frozen.value == trial.best_metric
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"

    # and the study is mirrored into the experiment's optuna.journal, as the optuna backend's study is kept there:
    # what optuna-dashboard reads (issue 13: before, Ray's study lived in memory only)
    journal = optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal"))
    on_journal = optuna.load_study(study_name="tiny-search", storage=optuna.storages.JournalStorage(journal))
    mirrored = {(t.params["hidden"], t.state, t.values and t.value) for t in on_journal.get_trials()}
    assert mirrored == {(f.params["hidden"], f.state, f.values and f.value) for f in study_trials.values()}
    assert {t.state for t in on_journal.get_trials()} == {
        optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE
    }  # fmt: skip

    # a finished experiment is shown, not rerun
    again = search(_experiment(tmp_path))
    assert [(t.trial_id, t.ended_at) for t in again.trials] == [(t.trial_id, t.ended_at) for t in on_disk.trials]


def test_asha_stopped_trials_reach_optuna_as_pruned():
    import optuna

    from tunetrain.space import SearchSpace
    from tunetrain.tuning.ray import driver

    space = SearchSpace.from_mapping({"x": {"type": "float", "low": 0.0, "high": 1.0}})
    search_state = driver.SearchState()
    searcher = driver.PrunedAwareOptunaSearch(
        search_state,
        space=space.define_by_run,
        metric="objective",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for trial_id in ("stopped", "finished", "broken"):
        searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"objective": 0.5, "evaluation": 1})
    search_state.stopped_early.add("stopped")
    searcher.on_trial_complete("stopped", {"objective": 0.5, "evaluation": 1})
    searcher.on_trial_complete("finished", {"objective": 0.9, "evaluation": 3})
    searcher.on_trial_complete("broken", None, error=True)
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert searcher._ot_study.trials[0].intermediate_values == {1: 0.5}


FLAKY_TASK = '''
import os, sys
sys.path.insert(0, {tests!r})
import torch
import tiny_task

class Flaky(torch.nn.Module):
    """Raises once, at its 40th training step; counts the steps each instance trains."""
    def __init__(self):
        super().__init__()
        self.inner = tiny_task.model_init({{"hidden": 8, "dropout": 0.0}})
        self.steps = 0
    def forward(self, x):
        if self.training:
            self.steps += 1
            with open({log!r}, "a") as log:
                log.write(f"{{id(self)}} {{self.steps}}\\n")
            if self.steps == 40 and not os.path.exists({marker!r}):
                open({marker!r}, "w").close()
                raise RuntimeError("injected failure at step 40")
        return self.inner(x)

def task():
    t = tiny_task.task()
    t.model_init = lambda params: Flaky()
    return t
'''


def test_a_failing_trial_resumes_from_its_checkpoint(tmp_path):
    log, marker = tmp_path / "steps.log", tmp_path / "failed-once"
    path = tmp_path / "flaky_task.py"
    path.write_text(FLAKY_TASK.format(tests=str(TESTS), log=str(log), marker=str(marker)))
    experiment = _experiment(
        tmp_path, task=f"{path}:task", epochs=4, num_trials=1, max_failures=1, scheduler="none",
        points_to_evaluate=[{"learning_rate": 0.01, "hidden": 8}],
    )  # fmt: skip
    result = search(experiment)
    (trial,) = result.trials
    assert marker.exists()
    assert trial.status == "completed" and trial.evaluations == 4
    # 15 steps an epoch: the failure at step 40 came after checkpoint-30; the retry trained the last 30 steps
    runs: dict[str, int] = {}
    for instance, step in (line.split() for line in log.read_text().splitlines()):
        runs[instance] = int(step)
    assert sorted(runs.values()) == [30, 40]


def test_resources_no_node_can_hold_and_restart_loses_nothing(tmp_path):
    kept = tmp_path / "tiny-search" / "results.parquet"
    kept.parent.mkdir()
    kept.write_bytes(b"an earlier experiment")
    with pytest.raises(ConfigError, match=r"asks for 1 CPU \+ 1 GPU per trial, but no node of the Ray cluster"):
        search(_experiment(tmp_path), gpus_per_trial=1, restart=True)
    assert kept.read_bytes() == b"an earlier experiment"  # refused before --restart deleted anything


def test_a_user_error_inside_trials_stops_the_search(tmp_path):
    experiment = _experiment(tmp_path, epochs=2, num_trials=4, max_failures=0)
    experiment = experiment.replace(train={**experiment.sections["train"], "metric_for_best_model": "f1"})
    with pytest.raises(ConfigError, match=r"`metric_for_best_model` is 'f1', but the evaluation returned only"):
        search(experiment)


BROKEN_TASK = """
import sys
sys.path.insert(0, {tests!r})
import torch
import tiny_task

class Broken(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.inner = tiny_task.model_init({{"hidden": hidden, "dropout": 0.0}})
        self.hidden = hidden
    def forward(self, x):
        if self.training and self.hidden > 20:
            raise RuntimeError("this model always fails")
        return self.inner(x)

def task():
    t = tiny_task.task()
    t.model_init = lambda params: Broken(params["hidden"])
    return t
"""


def test_a_trial_that_keeps_failing_is_errored_and_the_search_goes_on(tmp_path):
    path = tmp_path / "broken_task.py"
    path.write_text(BROKEN_TASK.format(tests=str(TESTS)))
    experiment = _experiment(
        tmp_path, task=f"{path}:task", epochs=2, num_trials=2, max_failures=1, scheduler="none",
        points_to_evaluate=[{"learning_rate": 0.01, "hidden": 30}, {"learning_rate": 0.01, "hidden": 8}],
    )  # fmt: skip
    result = search(experiment)
    by_hidden = {t.params["hidden"]: t for t in result.trials}
    assert by_hidden[30].status == "errored"
    assert by_hidden[30].error == "RuntimeError: this model always fails"
    assert by_hidden[8].status == "completed" and by_hidden[8].evaluations == 2
    assert result.best.trial_id == by_hidden[8].trial_id  # an errored trial never becomes the best


def test_early_stopping_patience_ends_a_trial_as_stopped_early(tmp_path):
    experiment = _experiment(tmp_path, epochs=6, num_trials=1, scheduler="none",
                             points_to_evaluate=[{"learning_rate": 0.01, "hidden": 8}])  # fmt: skip
    experiment = experiment.replace(
        train={**experiment.sections["train"], "learning_rate": 0.0, "early_stopping_patience": 2},  # never improves
        space={"hidden": {"type": "int", "low": 4, "high": 32}},  # after evaluation 1
        search={**experiment.sections["search"], "points_to_evaluate": [{"hidden": 8}]},
    )
    (trial,) = search(experiment).trials
    assert (trial.status, trial.evaluations) == ("stopped_early", 3)


def test_a_diverging_trial_is_errored_with_the_reason_not_retried_and_the_search_goes_on(tmp_path):
    experiment = _experiment(tmp_path, epochs=2, num_trials=2, max_failures=2, scheduler="none")
    experiment = experiment.replace(
        space={"diverge_after": {"type": "categorical", "choices": [0, 20]}},
        search={**experiment.sections["search"], "sampler": "grid"},
    )
    result = search(experiment)
    by_value = {t.params["diverge_after"]: t for t in result.trials}
    diverged = by_value[20]
    assert diverged.status == "errored"
    assert diverged.error == "NonFiniteLossError: the training loss became nan in steps 16-30; the run stopped"
    assert diverged.evaluations == 1  # epoch 1 was evaluated (finite); the loss diverged in epoch 2
    assert by_value[0].status == "completed" and result.best.trial_id == by_value[0].trial_id
    # one attempt (Ray's retries would have resumed from checkpoint-15 and diverged again), and it stays ended
    ended = json.loads((Path(result.experiment_dir) / "trials" / diverged.trial_id / "ended.json").read_text())
    assert (ended["record"]["status"], ended["record"]["error"]) == ("errored", diverged.error)
    assert [row["evaluation"] for row in ended["history"]] == [1]
    events = list((Path(result.experiment_dir) / "tensorboard" / diverged.trial_id).glob("events.*"))
    assert len(events) == 1


def test_two_searches_in_one_process_on_different_backends_keep_their_own_results(tmp_path):
    # one after the other in this process: a Ray search, an Optuna one, a Ray one again (its scheduler, searcher and
    # bookkeeper share a state of their own: nothing of the first Ray search's ASHA stops leaks into the second)
    first = search(_experiment(tmp_path / "a", epochs=4, num_trials=4))
    second = search(_experiment(tmp_path / "b", epochs=2, num_trials=3, backend="optuna", scheduler="none"))
    third = search(_experiment(tmp_path / "c", epochs=2, num_trials=2, scheduler="none"))
    results = [read_results(tmp_path / where / "tiny-search") for where in "abc"]
    assert [len(r.trials) for r in results] == [4, 3, 2]
    assert [r.experiment_dir for r in (first, second, third)] == [str(tmp_path / w / "tiny-search") for w in "abc"]
    assert {t.trial_id for t in results[1].trials} == {"trial-0000", "trial-0001", "trial-0002"}
    assert not {t.trial_id for t in results[0].trials} & {t.trial_id for t in results[2].trials}
    assert {t.status for t in results[1].trials} == {"completed"} == {t.status for t in results[2].trials}
    assert all(t.evaluations == 2 for t in results[1].trials + results[2].trials)
    for result, where in zip(results, "abc", strict=True):
        for trial in result.trials:
            assert Path(trial.best_checkpoint).is_relative_to(tmp_path / where)


def test_a_trial_the_restored_study_lacks_trains_on_without_failing_the_search(caplog, monkeypatch):
    # seen once under a full disk: Ray's own state held a trial its searcher's (saved in another file) did not, and
    # OptunaSearch.on_trial_result raised KeyError, which ended the resumed search with a traceback
    monkeypatch.setattr(logging.getLogger("tunetrain"), "propagate", True)  # the CLI, run in-process, turns it off
    import optuna

    from tunetrain.space import SearchSpace
    from tunetrain.tuning.ray import driver

    space = SearchSpace.from_mapping({"x": {"type": "float", "low": 0.0, "high": 1.0}})
    search_state = driver.SearchState()
    searcher = driver.PrunedAwareOptunaSearch(
        search_state,
        space=space.define_by_run, metric="objective", mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
    )  # fmt: skip
    searcher.suggest("known")
    searcher.on_trial_result("lost", {"objective": 0.5, "evaluation": 1})
    searcher.on_trial_complete("lost", {"objective": 0.5, "evaluation": 1})
    searcher.on_trial_complete("known", {"objective": 0.7, "evaluation": 1})
    assert [t.state for t in searcher._ot_study.trials] == [optuna.trial.TrialState.COMPLETE]
    assert "trial lost is not in the study Ray restored" in caplog.text
    assert search_state.unknown_trials == {"lost"}  # said once a trial


def test_a_task_file_named_relative_to_the_experiment_file_works_on_ray_from_any_directory(tmp_path, monkeypatch):
    # issue 12 row 6 / issue 13: `task: mytask.py:task` resolved against the current directory, so every Ray trial
    # (whose worker runs elsewhere) failed with "file 'mytask.py' does not exist"
    import shutil

    from tunetrain.experiment import load_experiment

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(TESTS / "tiny_task.py", project / "mytask.py")
    raw = _experiment(tmp_path, epochs=1, num_trials=2, scheduler="none").to_dict()
    raw["task"] = "mytask.py:task"
    raw["search"]["storage"] = "runs"  # relative to the file too
    (project / "exp.yaml").write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path)  # not the file's folder
    result = search(load_experiment(project / "exp.yaml"))
    assert {t.status for t in result.trials} == {"completed"} and len(result.trials) == 2
    assert (project / "runs" / "tiny-search" / "results.parquet").is_file()
