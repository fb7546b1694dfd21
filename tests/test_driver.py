"""`tunetrain.tuning.driver.search`: which search runs (new, resumed, shown), on which backend, under whose lock."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import TESTS

from tunetrain import ConfigError, search
from tunetrain.experiment import experiment_from_dict
from tunetrain.storage import ExperimentDir, ExperimentLock

pytestmark = pytest.mark.e2e  # each runs a (small, in-process) search


def _experiment(tmp_path, **search_section):
    return experiment_from_dict(
        {
            "name": "drv",
            "task": f"{TESTS / 'tiny_task.py'}:task",
            "train": {"num_train_epochs": 2, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
                      "logging_strategy": "no", "metric_for_best_model": "accuracy", "report_to": "none"},
            "space": {"hidden": {"type": "int", "low": 4, "high": 16}},
            "search": {"num_trials": 2, "storage": str(tmp_path), "scheduler": "none", **search_section},
        }
    )  # fmt: skip


def test_a_search_continues_on_the_backend_it_started_on(tmp_path, caplog, monkeypatch):
    # row 7: an optuna search (the backend given as a flag) rerun with changed settings went on on Ray
    monkeypatch.setattr(logging.getLogger("tunetrain"), "propagate", True)  # the CLI, run in-process, turns it off
    started = _experiment(tmp_path)
    state = ExperimentDir.open(str(tmp_path), "drv")
    with ExperimentLock(state):
        state.write_state({"status": "running", "experiment": started.to_dict(), "backend": "optuna"})
    with pytest.raises(
        ConfigError, match=r"started on the optuna backend, but this run asks for ray: .*--backend optuna"
    ):
        search(started)  # the file's default backend is ray
    changed = _experiment(tmp_path, num_trials=3)
    result = search(changed, backend="optuna")  # changed settings: it goes on with those it started with
    assert "changed since this search started" in caplog.text
    assert len(result.trials) == 2 and (tmp_path / "drv" / "optuna.journal").is_file()
    assert not list((tmp_path / "drv").glob("experiment_state-*.json"))  # nothing of Ray's
    assert json.loads((tmp_path / "drv" / "search.json").read_text())["backend"] == "optuna"


def test_a_search_is_refused_while_another_driver_holds_the_experiment(tmp_path):
    experiment = _experiment(tmp_path, backend="optuna")
    held = r"experiment .*drv is being searched by another driver \(pid \d+ on "
    with ExperimentLock(ExperimentDir.open(str(tmp_path), "drv")), pytest.raises(ConfigError, match=held):
        search(experiment)
    assert search(experiment).best is not None  # released: it runs


def test_a_rerun_never_takes_its_task_from_the_experiment_dir(tmp_path):
    # the task is code: a search.json someone rewrote to name their own file must not run it (before: a rerun took
    # the experiment, task included, from search.json whenever the file differed)
    planted = tmp_path / "planted.py"
    marker = tmp_path / "planted-ran"
    planted.write_text(f"open({str(marker)!r}, 'w').close()\n")
    experiment = _experiment(tmp_path, backend="optuna")
    exp_dir = ExperimentDir.open(str(tmp_path), "drv")
    theirs = {**experiment.to_dict(), "task": f"{planted}:task"}
    with ExperimentLock(exp_dir):
        exp_dir.write_state({"status": "running", "experiment": theirs, "backend": "optuna"})
    with pytest.raises(ConfigError, match=r"started with task '.*planted\.py:task', but the file names '.*tiny_task"):
        search(experiment)
    assert not marker.exists()
    assert search(experiment, restart=True).best is not None  # --restart: the file's task, from the start


def test_a_task_file_with_the_same_name_and_bytes_is_the_same_task_and_the_files_path_is_used(tmp_path):
    # a search.json written when task paths were kept as given (relative), or a copy of the project elsewhere
    from tunetrain.tuning.driver import _same_task

    mine, copy, other = tmp_path / "a" / "task.py", tmp_path / "b" / "task.py", tmp_path / "c" / "task.py"
    for path, text in ((mine, "X = 1\n"), (copy, "X = 1\n"), (other, "X = 2\n")):
        path.parent.mkdir()
        path.write_text(text)
    assert _same_task(f"{copy}:task", f"{mine}:task")
    assert not _same_task(f"{other}:task", f"{mine}:task")  # other code
    assert not _same_task(f"{copy}:other", f"{mine}:task") and not _same_task(None, f"{mine}:task")
    assert not _same_task(f"{tmp_path / 'gone.py'}:task", f"{mine}:task")
