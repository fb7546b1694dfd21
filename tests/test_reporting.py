"""Tests for `tunetrain.reporting`: each reporter driven by hand, as the loop calls it, without training.

test_loop.py checks that a whole run's TensorBoard events and an Optuna-pruned run come out right; here each
hook's own rules are checked.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import optuna
import pytest

from tunetrain.args import TrainingArguments
from tunetrain.checkpoint import TrainerState
from tunetrain.reporting import ConsoleReporter, OptunaReporter, Reporter, TensorBoardReporter, TrainerControl


def _state(step: int = 0, max_steps: int = 10, evaluations: int = 0) -> TrainerState:
    return TrainerState(global_step=step, max_steps=max_steps, num_evaluations=evaluations)


def _events(logdir: Path) -> list:
    """Every event in the TFRecord files under `logdir`, read with tensorboardX's own protobufs."""
    from tensorboardX.proto.event_pb2 import Event

    found = []
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            found.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return found


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the scalar summaries under `logdir`."""
    found: dict[str, list[tuple[int, float]]] = {}
    for event in _events(logdir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


# --- TrainerControl ------------------------------------------------------------------------------------------------


def test_control_starts_running_and_stop_records_why():
    control = TrainerControl()
    assert (control.should_stop, control.reason, control.exception) == (False, None, None)
    error = RuntimeError("boom")
    control.stop("pruned", error)
    assert (control.should_stop, control.reason, control.exception) == (True, "pruned", error)
    control.stop("early stopping")
    assert (control.should_stop, control.reason, control.exception) == (True, "early stopping", None)


def test_the_base_reporter_accepts_every_hook():
    reporter, state, control = Reporter(), _state(), TrainerControl()
    reporter.on_train_begin(TrainingArguments(), state, {})
    reporter.on_step(state)
    reporter.on_log({"loss": 1.0}, state)
    reporter.on_evaluate({"eval_loss": 1.0}, state, control, None)
    reporter.on_train_end({}, state)
    reporter.close()
    assert not control.should_stop


# --- ConsoleReporter -----------------------------------------------------------------------------------------------


def test_console_writes_a_plain_line_per_log_and_evaluation_to_a_non_terminal():
    stream = io.StringIO()
    reporter = ConsoleReporter(stream=stream)
    assert reporter.use_bar is False  # a StringIO is not a terminal
    reporter.on_train_begin(TrainingArguments(), _state(), {})
    reporter.on_step(_state(1))
    assert stream.getvalue() == ""  # steps draw a bar only
    reporter.on_log({"loss": 0.123456, "learning_rate": 1e-4, "step": 3, "epoch": 1}, _state(3))
    reporter.on_evaluate({"eval_accuracy": 2 / 3}, _state(5), TrainerControl(), None)
    reporter.on_train_end({"train_runtime": 12.34567}, _state(10))
    assert stream.getvalue().splitlines() == [
        "step 3/10 loss=0.1235 learning_rate=0.0001 epoch=1",  # floats to 4 digits; `step` is in the prefix
        "step 5/10 eval_accuracy=0.6667",
        "step 10/10 train_runtime=12.35",
    ]


def test_console_with_a_bar_writes_the_lines_above_it_and_closes_it():
    stream = io.StringIO()
    reporter = ConsoleReporter(use_bar=True, stream=stream)
    reporter.on_train_begin(TrainingArguments(), _state(2, max_steps=4), {})
    for step in (3, 4):
        reporter.on_step(_state(step, max_steps=4))
    reporter.on_log({"loss": 0.5}, _state(4, max_steps=4))
    bar = reporter._bar
    assert bar is not None and bar.n == 4 and bar.total == 4  # resumed at step 2, two steps since
    reporter.on_train_end({"train_loss": 0.25}, _state(4, max_steps=4))
    assert reporter._bar is None and bar.disable  # tqdm disables a bar it closed
    output = stream.getvalue()
    assert "step 4/4 loss=0.5\n" in output and output.rstrip().endswith("step 4/4 train_loss=0.25")
    reporter.close()  # closing again (a failed run) is no error


# --- TensorBoardReporter -------------------------------------------------------------------------------------------


def test_tensorboard_writes_train_eval_and_hparams_events(tmp_path):
    reporter = TensorBoardReporter(tmp_path / "tb")
    reporter.on_train_begin(TrainingArguments(), _state(), {"learning_rate": 0.1, "layers": [1, 2], "act": "relu"})
    reporter.on_log({"loss": 0.5, "learning_rate": 0.1, "grad_norm": 2.0, "epoch": 0.5, "other": 1.0}, _state(4))
    metrics = {"eval_accuracy": 0.75, "eval_loss": 0.25, "eval_name": "test", "epoch": 1.0}
    reporter.on_evaluate(metrics, _state(8), TrainerControl(), None)
    reporter.on_train_end({"best_metric": 0.75, "train_loss": float("nan"), "note": "x"}, _state(10))
    assert reporter._writer is None  # closed at the end

    scalars = _scalars(tmp_path / "tb")
    assert scalars["train/loss"] == [(4, 0.5)]
    assert scalars["train/grad_norm"] == [(4, 2.0)]
    assert scalars["eval/accuracy"] == [(8, 0.75)] and scalars["eval/loss"] == [(8, 0.25)]
    assert "hparam/best_metric" in scalars
    assert not {"train/other", "train/epoch", "eval/name", "eval/epoch", "hparam/train_loss", "hparam/note"} & set(
        scalars
    )  # only the known train keys, only numeric eval_ metrics, only finite final ones


def test_a_resumed_run_hides_the_events_written_after_its_checkpoint(tmp_path):
    from tensorboardX.proto.event_pb2 import SessionLog

    resumed = TensorBoardReporter(tmp_path / "resumed")
    resumed.on_train_begin(TrainingArguments(), _state(20), {})
    resumed.close()
    starts = [e.step for e in _events(tmp_path / "resumed") if e.session_log.status == SessionLog.START]
    assert starts == [21]  # TensorBoard purges the killed run's events from step 21 on

    fresh = TensorBoardReporter(tmp_path / "fresh")
    fresh.on_train_begin(TrainingArguments(), _state(0), {})
    fresh.close()
    assert not [e for e in _events(tmp_path / "fresh") if e.session_log.status == SessionLog.START]


def test_tensorboard_close_before_begin_is_no_error(tmp_path):
    reporter = TensorBoardReporter(tmp_path / "tb")
    reporter.close()
    assert not (tmp_path / "tb").exists()


# --- OptunaReporter ------------------------------------------------------------------------------------------------


class _PruneAfter(optuna.pruners.BasePruner):
    """Prunes once the trial has reported `after` values."""

    def __init__(self, after: int) -> None:
        self.after = after

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return len(trial.intermediate_values) >= self.after


def _trial(after: int) -> tuple[optuna.Study, optuna.Trial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=_PruneAfter(after))
    return study, study.ask()


def test_optuna_reporter_reports_each_evaluation_by_its_number():
    study, trial = _trial(after=99)
    reporter = OptunaReporter(trial, "eval_accuracy")
    control = TrainerControl()
    for number, value in ((1, 0.5), (2, 0.75)):
        reporter.on_evaluate({"eval_accuracy": value, "eval_loss": 1.0}, _state(10 * number, 30, number), control, None)
    assert study.trials[0].intermediate_values == {1: 0.5, 2: 0.75}
    assert not control.should_stop


def test_optuna_reporter_stops_the_run_when_optuna_prunes_it():
    study, trial = _trial(after=2)
    reporter = OptunaReporter(trial, "eval_loss")
    control = TrainerControl()
    reporter.on_evaluate({"eval_loss": 1.5}, _state(10, 30, 1), control, None)
    assert not control.should_stop
    reporter.on_evaluate({"eval_loss": 1.25}, _state(20, 30, 2), control, None)  # returns: the loop winds down
    assert control.should_stop and control.reason == "pruned"
    assert isinstance(control.exception, optuna.TrialPruned)
    assert str(control.exception) == "pruned at evaluation 2 (step 20, eval_loss=1.25)"
    assert study.trials[0].intermediate_values == {1: 1.5, 2: 1.25}


def test_optuna_reporter_reports_a_nan_evaluation_as_it_is():
    study, trial = _trial(after=99)
    OptunaReporter(trial, "eval_loss").on_evaluate(
        {"eval_loss": float("nan")}, _state(5, 10, 1), TrainerControl(), None
    )
    assert math.isnan(study.trials[0].intermediate_values[1])


def test_optuna_reporter_needs_its_metric_in_the_evaluation():
    # the loop checks the metric exists before a run starts (test_loop.py); here a missing one is not swallowed
    _, trial = _trial(after=99)
    with pytest.raises(KeyError, match="eval_f1"):
        OptunaReporter(trial, "eval_f1").on_evaluate({"eval_loss": 1.0}, _state(5, 10, 1), TrainerControl(), None)
