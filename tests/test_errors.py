"""`tunetrain.errors`: one base class for every error raised on purpose, and the CLI's one line per error."""

from __future__ import annotations

import pytest

import tunetrain
from tunetrain import cli
from tunetrain.errors import (
    CheckpointError,
    ConfigError,
    NonFiniteLossError,
    StorageError,
    TaskError,
    TunetrainError,
)

ERRORS = (ConfigError, CheckpointError, TaskError, StorageError, NonFiniteLossError)


@pytest.mark.parametrize("error", ERRORS)
def test_every_error_is_a_tunetrain_error(error):
    assert issubclass(error, TunetrainError)
    with pytest.raises(TunetrainError, match="the message"):
        raise error("the message")


@pytest.mark.parametrize("error", [ConfigError, CheckpointError, TaskError])
def test_user_errors_are_value_errors_and_exit_2(error):
    assert issubclass(error, ValueError)
    assert error.exit_code == 2
    with pytest.raises(ValueError, match="bad value"):  # callers that catch ValueError still catch them
        raise error("bad value")


@pytest.mark.parametrize("error", [StorageError, NonFiniteLossError])
def test_failures_are_runtime_errors_and_exit_1(error):
    assert issubclass(error, RuntimeError)
    assert not issubclass(error, ValueError)
    assert error.exit_code == 1


def test_the_public_api_exports_every_error():
    for error in (TunetrainError, *ERRORS):
        assert error.__name__ in tunetrain.__all__
        assert getattr(tunetrain, error.__name__) is error


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tunetrain: error: ")
    return lines[0]


def test_train_on_a_missing_file_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no_such.yaml"
    assert cli.main(["train", str(missing)]) == 2
    assert _one_error_line(capsys) == f"tunetrain: error: experiment file {str(missing)!r} does not exist"


def test_train_on_a_bad_key_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: a:b\ntrain: {learning_rat: 0.1}\n")
    assert cli.main(["train", str(bad)]) == 2
    line = _one_error_line(capsys)
    assert "`train.learning_rat` is not a TrainingArguments field (did you mean `learning_rate`?)" in line


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("`x` is 1, but must be 2"), 2),
        (TaskError("no module named 'nope'"), 2),
        (StorageError("no space left on device"), 1),
        (NonFiniteLossError("the loss is nan at step 3"), 1),
    ],
)
def test_the_exit_code_comes_from_the_error(monkeypatch, capsys, error, code):
    def fail(args):
        raise error

    monkeypatch.setitem(cli._COMMANDS, "train", fail)
    assert cli.main(["train", "any.yaml"]) == code
    assert _one_error_line(capsys) == f"tunetrain: error: {error}"


def test_other_exceptions_keep_their_traceback(monkeypatch):
    def fail(args):
        raise RuntimeError("a bug of ours")

    monkeypatch.setitem(cli._COMMANDS, "train", fail)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        cli.main(["train", "any.yaml"])
