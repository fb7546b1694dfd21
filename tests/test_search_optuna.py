"""The Optuna backend (tunetrain/search/optuna.py): a small study of the tiny task, run in this process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tunetrain import checkpoint as ckpt
from tunetrain.errors import ConfigError
from tunetrain.experiment import Experiment, experiment_from_dict
from tunetrain.loop import Trainer
from tunetrain.reporting import Reporter
from tunetrain.results import read_history, read_results
from tunetrain.storage import ExperimentDir
from tunetrain.tuning import optuna as optuna_backend
from tunetrain.tuning.config import SearchConfig
from tunetrain.tuning.trial import trial_arguments

TINY_TASK = Path(__file__).parent / "tiny_task.py"
EPOCHS = 6

# model_init fails for hidden > 20; compute_metrics fails at the second evaluation of each attempt of such a model
# (so an attempt resumed from a checkpoint gets one evaluation further than the one before it)
FLAKY_TASK = """
import sys
sys.path.insert(0, {tests!r})
import tiny_task
from tunetrain.task import Task

LOG = {log!r}
state = {{"hidden": 0, "evaluations": 0}}


def model_init(params):
    state.update(hidden=int(params["hidden"]), evaluations=0)
    with open(LOG, "a") as f:
        f.write(f"init hidden={{state['hidden']}}\\n")
    if state["hidden"] > 20 and {fail_at_init!r}:
        raise RuntimeError("injected failure at model_init")
    return tiny_task.model_init(params)


def accuracy(predictions, labels):
    state["evaluations"] += 1
    if state["hidden"] > 20 and state["evaluations"] == 2:
        raise RuntimeError("injected failure at an evaluation")
    return tiny_task.accuracy(predictions, labels)


def task():
    train, evaluation = tiny_task._data()
    return Task(model_init=model_init, train_dataset=train, eval_dataset=evaluation, compute_metrics=accuracy)
"""

# Ctrl-C at the third evaluation of the first run (the marker file says it happened); model_init sleeps `delay` s
INTERRUPTED_TASK = """
import os
import sys
import time
sys.path.insert(0, {tests!r})
import tiny_task
from tunetrain.task import Task

MARKER = {marker!r}
state = {{"evaluations": 0}}


def model_init(params):
    state["evaluations"] = 0
    time.sleep({delay!r})
    return tiny_task.model_init(params)


def accuracy(predictions, labels):
    state["evaluations"] += 1
    if state["evaluations"] == 3 and not os.path.exists(MARKER):
        open(MARKER, "w").close()
        raise KeyboardInterrupt
    return tiny_task.accuracy(predictions, labels)


def task():
    train, evaluation = tiny_task._data()
    return Task(model_init=model_init, train_dataset=train, eval_dataset=evaluation, compute_metrics=accuracy)
"""

SPACE = {
    "learning_rate": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
    "hidden": {"type": "int", "low": 4, "high": 32},
}


def _experiment(
    storage: Path, *, task: str | None = None, train: dict | None = None, space: dict | None = None, **search: Any
) -> Experiment:
    return experiment_from_dict(
        {
            "name": "tiny-optuna",
            "task": task or f"{TINY_TASK}:task",
            "train": {
                "num_train_epochs": EPOCHS,
                "per_device_train_batch_size": 16,
                "eval_strategy": "epoch",
                "logging_strategy": "no",
                "metric_for_best_model": "accuracy",
                "report_to": "none",
                **(train or {}),
            },
            "space": space or SPACE,
            "search": {
                "backend": "optuna",
                "num_trials": 6,
                "storage": str(storage),
                "seed": 0,
                "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
                **search,
            },
        }
    )


def _config(experiment: Experiment) -> SearchConfig:
    return SearchConfig.from_dict(experiment.search_section(), space=experiment.space, args=experiment.train)


def _search(experiment: Experiment):
    config = _config(experiment)
    return optuna_backend.OptunaBackend(experiment, config, ExperimentDir.open(config.storage, experiment.name)).run()


def _study(exp_path: str | Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny-optuna", storage=optuna_backend.journal_storage(exp_path))


def _history(exp_path: str | Path, trial_id: str) -> list[dict[str, Any]]:
    rows = [row for row in read_history(exp_path) if row["trial_id"] == trial_id]
    return sorted(rows, key=lambda row: row["evaluation"])


@pytest.fixture
def start_steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(trial id, global step) at the start of every training attempt of a trial."""
    starts: list[tuple[str, int]] = []

    def on_train_begin(self, args, state, params) -> None:
        starts.append((self.trial_id, state.global_step))

    monkeypatch.setattr(optuna_backend._BookReporter, "on_train_begin", on_train_begin)
    return starts


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Experiment, Any]:
    """One search of 6 trials with ASHA and TensorBoard, shared by the end-to-end tests."""
    storage = tmp_path_factory.mktemp("runs")
    experiment = _experiment(storage, train={"report_to": "tensorboard"})
    return experiment, _search(experiment)


@pytest.mark.e2e
def test_search_runs_the_planned_trials_and_results_match_what_ran(finished: tuple[Experiment, Any]) -> None:
    _, result = finished
    exp_path = Path(result.experiment_dir)
    on_disk = read_results(exp_path)
    assert [t.trial_id for t in on_disk.trials] == [f"trial-{n:04d}" for n in range(6)]
    study = _study(exp_path)
    states = {f"trial-{t.number:04d}": t.state for t in study.trials}
    expected = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned"}
    for record in on_disk.trials:
        assert record.status == expected[states[record.trial_id]]
        assert record.params == study.trials[record.number].params
        history = _history(exp_path, record.trial_id)
        assert [row["evaluation"] for row in history] == list(range(1, record.evaluations + 1))
        assert 1 <= record.evaluations <= EPOCHS
        if record.status == "completed":
            assert record.evaluations == EPOCHS
        # the objective is the best evaluation, and that is what Optuna was told for a completed trial
        assert record.best_metric == max(row["metric"] for row in history)
        assert record.last_metric == history[-1]["metric"]
        if record.status == "completed":
            assert study.trials[record.number].value == record.best_metric
        # the best checkpoint survives the trial's checkpoint rotation
        assert record.best_checkpoint is not None and Path(record.best_checkpoint).is_dir()
        assert ckpt.checkpoint_step(record.best_checkpoint) == record.best_step
    pruned = [t for t in on_disk.trials if t.status == "pruned"]
    assert pruned, "ASHA pruned no trial"
    assert all(t.evaluations < EPOCHS for t in pruned)
    assert result.best.best_metric == max(t.best_metric for t in on_disk.trials)


@pytest.mark.e2e
def test_journal_is_readable_by_a_fresh_optuna_study(finished: tuple[Experiment, Any]) -> None:
    _, result = finished
    study = _study(result.experiment_dir)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert len(study.trials) == 6
    assert study.best_value == result.best.best_metric
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(max(t.intermediate_values) < EPOCHS for t in pruned)


@pytest.mark.e2e
def test_each_trial_writes_its_own_tensorboard_events(finished: tuple[Experiment, Any]) -> None:
    _, result = finished
    for record in result.trials:
        events = list((Path(result.experiment_dir) / "tensorboard" / record.trial_id).glob("events.out.tfevents.*"))
        assert events, f"no TensorBoard events for {record.trial_id}"


@pytest.mark.e2e
def test_rerun_of_a_finished_search_runs_no_new_trial(finished: tuple[Experiment, Any]) -> None:
    experiment, result = finished
    before = read_results(result.experiment_dir)
    again = _search(experiment)
    assert len(_study(result.experiment_dir).trials) == 6
    assert [(t.trial_id, t.status, t.best_metric) for t in again.trials] == [
        (t.trial_id, t.status, t.best_metric) for t in before.trials
    ]


class _StopAfterFirstEvaluation(Reporter):
    def on_evaluate(self, metrics, state, control, checkpoint) -> None:
        raise KeyboardInterrupt  # as a kill would: the checkpoint of this evaluation is already on disk


@pytest.mark.e2e
def test_interrupted_trial_resumes_from_its_checkpoint(tmp_path: Path, start_steps: list) -> None:
    experiment = _experiment(tmp_path, num_trials=2, scheduler="none")
    exp_path = tmp_path / "tiny-optuna"
    _search(experiment)

    # a driver killed in its third trial: Optuna holds it RUNNING and its directory one epoch's checkpoint
    study = _study(exp_path)
    killed = study.ask()
    params = experiment.space.sample(killed)
    output_dir = exp_path / "trials" / f"trial-{killed.number:04d}"
    args = trial_arguments(experiment, _config(experiment), str(output_dir))
    with pytest.raises(KeyboardInterrupt):
        Trainer(f"{TINY_TASK}:task", args, experiment.space, reporters=[_StopAfterFirstEvaluation()]).train(
            trial=params
        )
    first = ckpt.find_latest(output_dir)
    first_step = ckpt.checkpoint_step(first)
    assert first_step == 15  # 240 examples / 16 per batch

    result = _search(_experiment(tmp_path, num_trials=3, scheduler="none"))
    study = _study(exp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    failed, rerun = study.trials[2], study.trials[3]
    assert failed.user_attrs[optuna_backend.INTERRUPTED_ATTR] is True
    assert rerun.params == params and rerun.user_attrs[optuna_backend.TRIAL_ID_ATTR] == "trial-0002"
    assert rerun.state == TrialState.COMPLETE
    # the checkpoint's evaluation is replayed into Optuna, the rest trained from step 15 on
    assert sorted(rerun.intermediate_values) == list(range(1, EPOCHS + 1))
    assert ("trial-0002", first_step) in start_steps and ("trial-0002", 0) not in start_steps
    # the book, which never saw the killed run, gets its evaluation from the checkpoint
    history = _history(exp_path, "trial-0002")
    assert [row["step"] for row in history] == [first_step * e for e in range(1, EPOCHS + 1)]
    # one row per planned trial, the re-run under the original id and directory
    assert [t.trial_id for t in result.trials] == ["trial-0000", "trial-0001", "trial-0002"]
    assert all(t.status == "completed" for t in result.trials)
    state = ckpt.read_trainer_state(ckpt.find_latest(output_dir))
    assert state.global_step == EPOCHS * first_step and state.num_evaluations == EPOCHS
    assert not (exp_path / "trials" / "trial-0003").exists()


@pytest.mark.e2e
def test_a_trial_that_raises_is_retried_from_its_checkpoint_then_errored(tmp_path: Path, start_steps: list) -> None:
    log = tmp_path / "calls.log"
    task_file = tmp_path / "flaky_task.py"
    task_file.write_text(FLAKY_TASK.format(tests=str(TINY_TASK.parent), log=str(log), fail_at_init=False))
    points = [{"learning_rate": 0.05, "hidden": 24}, {"learning_rate": 0.05, "hidden": 8}]
    experiment = _experiment(
        tmp_path, task=f"{task_file}:task", num_trials=2, max_failures=2, scheduler="none", points_to_evaluate=points
    )
    result = _search(experiment)

    errored, completed = result.trials
    assert (errored.status, completed.status) == ("errored", "completed")
    assert errored.error == "RuntimeError: injected failure at an evaluation"
    # 1 attempt + 2 retries; each retry resumed from the checkpoint the one before it saved
    assert log.read_text().splitlines() == ["init hidden=24"] * 3 + ["init hidden=8"]
    assert start_steps == [("trial-0000", 0), ("trial-0000", 15), ("trial-0000", 30), ("trial-0001", 0)]
    assert errored.evaluations == 3
    assert [row["step"] for row in _history(tmp_path / "tiny-optuna", "trial-0000")] == [15, 30, 45]
    assert completed.evaluations == EPOCHS
    states = [t.state for t in _study(tmp_path / "tiny-optuna").trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


@pytest.mark.e2e
def test_a_trial_failing_at_every_attempt_is_errored_and_the_search_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    task_file = tmp_path / "broken_task.py"
    task_file.write_text(FLAKY_TASK.format(tests=str(TINY_TASK.parent), log=str(log), fail_at_init=True))
    experiment = _experiment(
        tmp_path,
        task=f"{task_file}:task",
        num_trials=3,
        max_failures=1,
        scheduler="none",
        points_to_evaluate=[{"hidden": 30}, {"hidden": 4}, {"hidden": 28}],
    )
    result = _search(experiment)
    assert [t.status for t in result.trials] == ["errored", "completed", "errored"]
    assert result.trials[0].error == "RuntimeError: injected failure at model_init"
    assert log.read_text().splitlines() == ["init hidden=30"] * 2 + ["init hidden=4"] + ["init hidden=28"] * 2
    assert result.best.trial_id == "trial-0001"


@pytest.mark.e2e
def test_a_config_error_stops_the_search_and_a_fixed_rerun_runs_that_trial_again(tmp_path: Path) -> None:
    experiment = _experiment(tmp_path, train={"metric_for_best_model": "f1"}, num_trials=2, scheduler="none")
    with pytest.raises(ConfigError, match="`metric_for_best_model` is 'f1', but the evaluation returned only"):
        _search(experiment)
    study = _study(tmp_path / "tiny-optuna")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    (record,) = read_results(tmp_path / "tiny-optuna").trials
    assert record.status == "errored" and "metric_for_best_model" in record.error

    result = _search(_experiment(tmp_path, num_trials=2, scheduler="none"))
    assert [(t.trial_id, t.status) for t in result.trials] == [("trial-0000", "completed"), ("trial-0002", "completed")]
    study = _study(tmp_path / "tiny-optuna")
    assert study.trials[1].params == study.trials[0].params
    assert result.trials[0].params == study.trials[0].params


@pytest.mark.e2e
def test_ctrl_c_leaves_the_trial_to_resume_on_the_next_run(tmp_path: Path, start_steps: list) -> None:
    task_file = tmp_path / "interrupted_task.py"
    marker = tmp_path / "interrupted"
    task_file.write_text(INTERRUPTED_TASK.format(tests=str(TINY_TASK.parent), marker=str(marker), delay=0))
    experiment = _experiment(tmp_path, task=f"{task_file}:task", num_trials=2, scheduler="none")
    with pytest.raises(KeyboardInterrupt):
        _search(experiment)
    exp_path = tmp_path / "tiny-optuna"
    (interrupted,) = _study(exp_path).trials
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs[optuna_backend.INTERRUPTED_ATTR]
    assert read_results(exp_path).trials[0].status == "running"

    result = _search(experiment)
    assert [(t.trial_id, t.status) for t in result.trials] == [("trial-0000", "completed"), ("trial-0002", "completed")]
    # evaluations 1 and 2 ran before Ctrl-C; the checkpoint of the second is where the re-run starts
    assert start_steps == [("trial-0000", 0), ("trial-0000", 30), ("trial-0002", 0)]
    assert [row["step"] for row in _history(exp_path, "trial-0000")] == [15 * e for e in range(1, EPOCHS + 1)]
    rerun = _study(exp_path).trials[1]
    assert rerun.user_attrs[optuna_backend.TRIAL_ID_ATTR] == "trial-0000"
    assert sorted(rerun.intermediate_values) == list(range(1, EPOCHS + 1))


KILLED_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
from test_search_optuna import _experiment, _search
_search(_experiment({storage!r}, task={task!r}, num_trials=2, scheduler="none"))
"""


@pytest.mark.e2e
def test_a_driver_killed_with_sigkill_resumes_on_rerun(tmp_path: Path, start_steps: list) -> None:
    import subprocess
    import sys

    task_file = tmp_path / "killing_task.py"
    marker = tmp_path / "killed"
    text = INTERRUPTED_TASK.format(tests=str(TINY_TASK.parent), marker=str(marker), delay=0)
    task_file.write_text(text.replace("raise KeyboardInterrupt", "os.kill(os.getpid(), 9)"))
    script = KILLED_DRIVER.format(tests=str(TINY_TASK.parent), storage=str(tmp_path), task=f"{task_file}:task")
    driver = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert driver.returncode == -9, driver.stderr
    exp_path = tmp_path / "tiny-optuna"
    assert [t.state for t in _study(exp_path).trials] == [TrialState.RUNNING]

    result = _search(_experiment(tmp_path, task=f"{task_file}:task", num_trials=2, scheduler="none"))
    assert [(t.trial_id, t.status) for t in result.trials] == [("trial-0000", "completed"), ("trial-0002", "completed")]
    # killed at its third evaluation: the re-run trains on from the second's checkpoint (step 30)
    assert start_steps == [("trial-0000", 30), ("trial-0002", 0)]
    rerun = _study(exp_path).trials[1]
    assert rerun.user_attrs[optuna_backend.TRIAL_ID_ATTR] == "trial-0000"
    assert sorted(rerun.intermediate_values) == list(range(1, EPOCHS + 1))
    # one history row per evaluation, including those the killed driver had not written yet
    history = _history(exp_path, "trial-0000")
    assert [row["step"] for row in history] == [15 * e for e in range(1, EPOCHS + 1)]


@pytest.mark.e2e
def test_no_trial_starts_after_the_time_budget(tmp_path: Path) -> None:
    task_file = tmp_path / "slow_task.py"
    marker = tmp_path / "never-interrupt"
    marker.touch()
    task_file.write_text(INTERRUPTED_TASK.format(tests=str(TINY_TASK.parent), marker=str(marker), delay=0.3))
    experiment = _experiment(tmp_path, task=f"{task_file}:task", num_trials=3, time_budget_s=0.2)
    result = _search(experiment)  # the first trial alone takes longer than the budget
    assert len(result.trials) == 1
    assert len(_study(tmp_path / "tiny-optuna").trials) == 1


@pytest.mark.e2e
def test_asha_max_t_ends_every_trial_there(tmp_path: Path) -> None:
    scheduler = {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 2}
    result = _search(_experiment(tmp_path, num_trials=3, scheduler=scheduler))
    assert all(t.evaluations <= 2 for t in result.trials)
    assert result.trials[0].status == "completed" and result.trials[0].evaluations == 2


@pytest.mark.e2e
def test_a_grid_search_ends_when_the_grid_is_exhausted(tmp_path: Path) -> None:
    space = {"hidden": {"type": "categorical", "choices": [4, 8, 16]}}
    experiment = _experiment(tmp_path, space=space, num_trials=5, sampler="grid", scheduler="none")
    result = _search(experiment)
    assert sorted(t.params["hidden"] for t in result.trials) == [4, 8, 16]


def test_remote_storage_is_refused(tmp_path: Path) -> None:
    from pyarrow import fs

    experiment = _experiment(tmp_path)
    config = _config(experiment)
    remote = ExperimentDir(fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem()), "tiny-optuna", "s3://b/x")
    with pytest.raises(ConfigError, match="the optuna backend needs a local or mounted directory"):
        optuna_backend.OptunaBackend(experiment, config, remote).prepare()


@pytest.mark.e2e
def test_a_search_metric_other_than_the_runs_decides_each_trials_best(tmp_path: Path) -> None:
    # the run alone would track eval_loss (its default); the search judges trials by accuracy
    train = {"metric_for_best_model": None}
    experiment = _experiment(tmp_path, train=train, num_trials=2, metric="accuracy", mode="max", scheduler="none")
    result = _search(experiment)
    assert result.metric == "eval_accuracy" and result.mode == "max"
    study = _study(tmp_path / "tiny-optuna")
    for record in result.trials:
        history = _history(tmp_path / "tiny-optuna", record.trial_id)
        assert record.best_metric == max(row["metric"] for row in history)
        assert study.trials[record.number].value == record.best_metric
        args = json.loads((Path(record.best_checkpoint) / ckpt.ARGS_NAME).read_text())
        assert (args["metric_for_best_model"], args["greater_is_better"]) == ("eval_accuracy", True)


@pytest.mark.e2e
def test_a_diverging_trial_is_errored_with_the_reason_not_retried_and_never_best(
    tmp_path: Path, start_steps: list
) -> None:
    space = {"diverge_after": {"type": "categorical", "choices": [0, 20]}}  # 0: trains normally
    experiment = _experiment(tmp_path, space=space, num_trials=2, max_failures=2, scheduler="none", sampler="grid")
    result = _search(experiment)
    by_status = {t.status: t for t in result.trials}
    assert set(by_status) == {"completed", "errored"}
    diverged = by_status["errored"]
    assert diverged.params == {"diverge_after": 20}
    assert diverged.error == "NonFiniteLossError: the training loss became nan in steps 16-30; the run stopped"
    assert [step for trial_id, step in start_steps if trial_id == diverged.trial_id] == [0]  # no retry
    assert result.best.trial_id == by_status["completed"].trial_id
    states = {f"trial-{t.number:04d}": t.state for t in _study(result.experiment_dir).trials}
    assert states[diverged.trial_id] == TrialState.FAIL


@pytest.mark.e2e
def test_a_trial_out_of_memory_is_errored_with_the_reason_and_the_search_goes_on(
    tmp_path: Path, start_steps: list
) -> None:
    space = {"oom_after": {"type": "categorical", "choices": [0, 20]}}  # 0: trains normally
    experiment = _experiment(tmp_path, space=space, num_trials=2, max_failures=1, scheduler="none", sampler="grid")
    result = _search(experiment)
    by_value = {t.params["oom_after"]: t for t in result.trials}
    oom = by_value[20]
    assert oom.status == "errored"
    assert oom.error == "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (simulated)"
    # retried once (max_failures 1) from its checkpoint at step 15: an OOM may be another process's, passing
    assert [step for trial_id, step in start_steps if trial_id == oom.trial_id] == [0, 15]
    assert by_value[0].status == "completed" and result.best.trial_id == by_value[0].trial_id


def _write(path: Path, experiment: Experiment) -> Path:
    path.write_text(json.dumps(experiment.to_dict()))  # JSON is YAML
    return path


@pytest.mark.e2e
def test_restart_removes_the_old_search_and_runs_the_new_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tunetrain.cli import main

    path = tmp_path / "exp.yaml"
    _write(path, _experiment(tmp_path, num_trials=2, scheduler="none", train={"num_train_epochs": 2}))
    assert main(["search", str(path)]) == 0
    exp_path = tmp_path / "tiny-optuna"
    first = read_results(exp_path)
    (exp_path / "left-over.txt").write_text("a file of the search before")
    capsys.readouterr()

    _write(path, _experiment(tmp_path, num_trials=2, scheduler="none", train={"num_train_epochs": 3}))
    assert main(["search", str(path), "--restart"]) == 0
    err = capsys.readouterr().err
    assert f"--restart: removing {exp_path}" in err
    assert "changed since this search started" not in err  # a restart takes the file as it is now
    assert not (exp_path / "left-over.txt").exists()
    second = read_results(exp_path)
    assert [(t.status, t.evaluations) for t in second.trials] == [("completed", 3), ("completed", 3)]
    assert min(t.started_at for t in second.trials) > max(t.ended_at for t in first.trials)  # new trials ran
    assert len(_study(exp_path).trials) == 2  # a new journal: the old trials are not in it
    for trial in second.trials:  # each trial's dir holds the new run's checkpoints only (3 epochs of 15 steps)
        assert ckpt.find_latest(exp_path / "trials" / trial.trial_id).name == "checkpoint-45"
    started = json.loads((exp_path / "search.json").read_text())
    assert started["status"] == "finished" and started["experiment"]["train"]["num_train_epochs"] == 3


@pytest.mark.e2e
def test_a_changed_experiment_file_warns_and_the_search_goes_on_as_it_started(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tunetrain.cli import main

    task_file = tmp_path / "interrupted_task.py"  # Ctrl-C at the third evaluation of the first trial
    task_file.write_text(INTERRUPTED_TASK.format(tests=str(TINY_TASK.parent), marker=str(tmp_path / "hit"), delay=0))
    path = tmp_path / "exp.yaml"
    _write(path, _experiment(tmp_path, task=f"{task_file}:task", num_trials=2, scheduler="none"))
    assert main(["search", str(path)]) == 130
    capsys.readouterr()

    changed = _experiment(
        tmp_path, task=f"{task_file}:task", num_trials=3, scheduler="none", train={"num_train_epochs": 2}
    )
    _write(path, changed)
    assert main(["search", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        "the experiment file (or --set / flags) changed since this search started; it continues with the settings "
        "it started with" in err
    )
    exp_path = tmp_path / "tiny-optuna"
    result = read_results(exp_path)
    # the settings it started with: 2 trials of EPOCHS epochs, not the file's 3 trials of 2
    assert [(t.status, t.evaluations) for t in result.trials] == [("completed", EPOCHS), ("completed", EPOCHS)]
    assert json.loads((exp_path / "search.json").read_text())["experiment"]["train"]["num_train_epochs"] == EPOCHS

    capsys.readouterr()
    assert main(["search", str(path)]) == 0  # finished: shown, and it still says the file is not what ran
    assert "changed since this search started" in capsys.readouterr().err
    assert len(_study(exp_path).trials) == 3  # no new trial (the interrupted one was told once, then rerun)


def test_a_search_of_a_task_without_model_init_stops_in_one_line(tmp_path):
    # issue 13: a single run may train a model given to the Trainer, but each trial of a search needs a fresh one
    task_file = tmp_path / "no_factory.py"
    task_file.write_text(
        f"import sys\nsys.path.insert(0, {str(TINY_TASK.parent)!r})\nimport dataclasses, tiny_task\n"
        "def task():\n    return dataclasses.replace(tiny_task.task(), model_init=None)\n"
    )
    with pytest.raises(ConfigError, match=r"has no model_init and the Trainer was given no model: a search builds"):
        _search(_experiment(tmp_path, task=f"{task_file}:task"))
