"""Damaged state in an experiment dir: each file tunetrain reads back, cut short or overwritten, is one line naming
it (exit 2 from the CLI), or, where it can be, repaired with a warning: a trial's damaged latest checkpoint falls
back to the complete one before it (both backends), and a journal line torn by a kill is cut off before Optuna
appends to the journal again.

test_checkpoint.py and test_loop.py cover a damaged checkpoint of a single run; test_storage.py and
test_results.py, the readers of JSON and parquet files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import TESTS
from optuna.trial import TrialState
from pyarrow import fs

from tunetrain import checkpoint as ckpt
from tunetrain.cli import main
from tunetrain.loop import Trainer
from tunetrain.reporting import Reporter
from tunetrain.storage import upload_dir
from tunetrain.tuning import optuna as optuna_backend
from tunetrain.tuning.trial import trial_arguments

pytestmark = pytest.mark.e2e


# --- a search rerun on a damaged experiment dir (the optuna backend, through the CLI) --------------------------------


def _searched(tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[Path, Path]:
    """A finished search of 2 trials, marked unfinished (as if the driver had been killed at its very end): a rerun
    reads every file of the experiment dir back. Returns the experiment file and the experiment dir."""
    experiment = tmp_path / "x.yaml"
    experiment.write_text(
        json.dumps({
            "name": "damaged",
            "task": f"{TESTS / 'tiny_task.py'}:task",
            "train": {"num_train_epochs": 2, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
                      "logging_strategy": "no", "metric_for_best_model": "accuracy", "report_to": "none"},
            "space": {"hidden": {"type": "int", "low": 4, "high": 16}},
            "search": {"backend": "optuna", "num_trials": 2, "storage": str(tmp_path / "runs"), "seed": 0,
                       "scheduler": "none"},
        })
    )  # fmt: skip
    assert main(["search", str(experiment)]) == 0
    capsys.readouterr()
    exp_dir = tmp_path / "runs" / "damaged"
    _set_state(exp_dir, status="running")
    return experiment, exp_dir


def _set_state(exp_dir: Path, **values) -> None:
    state = json.loads((exp_dir / "search.json").read_text())
    (exp_dir / "search.json").write_text(json.dumps({**state, **values}))


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def _garbage_first_line(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"\x00garbage\n" + b"".join(lines[1:]))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("results.parquet", lambda f: f.write_bytes(b"\x00garbage" * 50)),
        ("history.parquet", lambda f: f.write_bytes(f.read_bytes()[:200])),
        ("search.json", lambda f: f.write_bytes(f.read_bytes()[:30])),
        ("search.json", lambda f: f.write_bytes(b"\xff\xfe" + f.read_bytes())),
        ("optuna.journal", _garbage_first_line),
    ],
    ids=["results garbage", "history cut short", "state cut short", "state not utf-8", "journal garbage line"],
)
def test_a_rerun_on_a_damaged_file_stops_in_one_line_naming_it(tmp_path, capsys, name, damage):
    experiment, exp_dir = _searched(tmp_path, capsys)
    damage(exp_dir / name)
    assert main(["search", str(experiment)]) == 2
    line = _error_line(capsys)
    assert line.startswith("tunetrain: error: ") and str(exp_dir / name) in line, line
    assert re.search(r"restore it from a backup", line), line


def test_export_of_an_experiment_with_damaged_results_stops_in_one_line(tmp_path, capsys):
    _, exp_dir = _searched(tmp_path, capsys)
    (exp_dir / "results.parquet").write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    assert main(["export", str(exp_dir), "--out", str(tmp_path / "export")]) == 2
    assert str(exp_dir / "results.parquet") in _error_line(capsys)


def test_a_journal_line_torn_by_a_kill_is_cut_off_before_the_search_goes_on(tmp_path, capsys):
    experiment, exp_dir = _searched(tmp_path, capsys)
    journal = exp_dir / "optuna.journal"
    record = journal.read_bytes().splitlines()[-1]
    torn = record[: len(record) // 2]
    with journal.open("ab") as f:  # a kill in the middle of Optuna's last append
        f.write(torn)
    # a third trial to run, so the rerun appends to the journal (as the search it continues, started with 3)
    state = json.loads((exp_dir / "search.json").read_text())
    state["experiment"]["search"]["num_trials"] = 3
    _set_state(exp_dir, experiment=state["experiment"])

    assert main(["search", str(experiment)]) == 0
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(journal))}: its last line was cut short .*: {len(torn)} bytes dropped", err)
    (copy,) = exp_dir.glob("optuna.journal.torn-*")
    assert copy.read_bytes() == torn  # the dropped bytes, kept beside it
    assert all(json.loads(line) for line in journal.read_bytes().splitlines())  # nothing glued onto the torn line
    study = optuna.load_study(study_name="damaged", storage=optuna_backend.journal_storage(exp_dir))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_a_journal_ending_in_garbage_is_refused_not_cut_off(tmp_path, capsys):
    experiment, exp_dir = _searched(tmp_path, capsys)
    journal = exp_dir / "optuna.journal"
    before = journal.read_bytes()
    journal.write_bytes(before + b"\x00\x17 not a record")
    assert main(["search", str(experiment)]) == 2
    assert str(journal) in _error_line(capsys)
    assert journal.read_bytes() == before + b"\x00\x17 not a record"


# --- an interrupted trial whose latest checkpoint is damaged ---------------------------------------------------------


class _StopAtSecondEvaluation(Reporter):
    def on_evaluate(self, metrics, state, control, checkpoint) -> None:
        if state.num_evaluations == 2:
            raise KeyboardInterrupt  # as a kill would: the checkpoint of this evaluation is already on disk


def _cut_in_half(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_an_interrupted_optuna_trial_resumes_from_the_checkpoint_before_a_damaged_one(
    tmp_path, monkeypatch, caplog
) -> None:
    from test_search_optuna import _config, _experiment, _search, _study

    starts: list[tuple[str, int]] = []
    monkeypatch.setattr(
        optuna_backend._BookReporter,
        "on_train_begin",
        lambda self, args, state, params: starts.append((self.trial_id, state.global_step)),
    )
    experiment = _experiment(tmp_path, num_trials=1, scheduler="none")
    _search(experiment)
    # a driver killed in its second trial, after the checkpoint of its second epoch; that one then cut short
    killed = _study(tmp_path / "tiny-optuna").ask()
    output_dir = tmp_path / "tiny-optuna" / "trials" / f"trial-{killed.number:04d}"
    config = _config(experiment)
    args = trial_arguments(experiment, config, str(output_dir), save_total_limit=config.keep_checkpoints_per_trial)
    with pytest.raises(KeyboardInterrupt):
        Trainer(experiment.task, args, experiment.space, reporters=[_StopAtSecondEvaluation()], console=False).train(
            trial=experiment.space.sample(killed)
        )
    _cut_in_half(output_dir / "checkpoint-30" / ckpt.WEIGHTS_NAME)

    with caplog.at_level("WARNING", logger="tunetrain"):
        result = _search(_experiment(tmp_path, num_trials=2, scheduler="none"))
    assert [(t.trial_id, t.status) for t in result.trials] == [("trial-0000", "completed"), ("trial-0001", "completed")]
    assert starts == [("trial-0000", 0), ("trial-0001", 15)]  # from the complete checkpoint of step 15
    (warning,) = [m for m in caplog.messages if "cannot be resumed from" in m]
    assert str(output_dir / "checkpoint-30") in warning and str(output_dir / "checkpoint-15") in warning
    assert (output_dir / f"checkpoint-30{ckpt.DAMAGED_SUFFIX}").is_dir()


def _checkpoints(tiny_task, output_dir: Path) -> None:
    """Checkpoints 5, 10 and 15 of a short run of the tiny task in `output_dir`."""
    from tunetrain import TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=1, per_device_train_batch_size=16, save_steps=5,
        logging_strategy="no", report_to="none", disable_tqdm=True,
    )  # fmt: skip
    Trainer(tiny_task, args, console=False).train()


def test_a_ray_trial_on_local_storage_resumes_from_the_checkpoint_before_a_damaged_one(tmp_path, tiny_task, caplog):
    from tunetrain.tuning.ray import worker

    spec = SimpleNamespace(exp_path=str(tmp_path / "exp"), local=True, config=SimpleNamespace(storage=str(tmp_path)))
    store = worker.TrialStore(spec, "abc123")
    _checkpoints(tiny_task, Path(store.path))
    (Path(store.path) / "checkpoint-15" / ckpt.OPTIMIZER_NAME).write_bytes(b"")
    with caplog.at_level("WARNING", logger="tunetrain"):
        assert store.latest() == str(Path(store.path) / "checkpoint-10")
    assert any("checkpoint-15" in m and "cannot be resumed from" in m for m in caplog.messages)
    assert (Path(store.path) / f"checkpoint-15{ckpt.DAMAGED_SUFFIX}").is_dir()


def test_a_ray_trial_on_remote_storage_resumes_from_the_checkpoint_before_a_damaged_one(
    tmp_path, tiny_task, monkeypatch
):
    from tunetrain.tuning.ray import worker

    (tmp_path / "bucket").mkdir()
    remote = fs.SubTreeFileSystem(str(tmp_path / "bucket"), fs.LocalFileSystem())
    monkeypatch.setattr(worker, "resolve_storage", lambda storage: (remote, "runs"))
    spec = SimpleNamespace(exp_path="runs/exp", local=False, config=SimpleNamespace(storage="s3://bucket/runs"))
    _checkpoints(tiny_task, tmp_path / "run")
    store = worker.TrialStore(spec, "abc123")
    for path in ckpt.list_checkpoints(tmp_path / "run"):
        upload_dir(path, remote, f"{store.path}/{path.name}", marker=ckpt.TRAINER_STATE_NAME)
    # cut short in the bucket (the copy up of its weights interrupted, say)
    whole = (tmp_path / "run" / "checkpoint-15" / ckpt.WEIGHTS_NAME).read_bytes()
    with remote.open_output_stream(f"{store.path}/checkpoint-15/{ckpt.WEIGHTS_NAME}") as stream:
        stream.write(whole[: len(whole) // 2])

    latest = store.latest()
    assert latest == str(Path(store.output_dir) / "checkpoint-10")
    # moved aside in the bucket too, so that the mirrored rotation of the next save does not delete it
    names = {info.base_name for info in remote.get_file_info(fs.FileSelector(store.path))}
    assert names == {"checkpoint-5", "checkpoint-10", f"checkpoint-15{ckpt.DAMAGED_SUFFIX}"}
    store.persist(Path(latest))
    assert f"checkpoint-15{ckpt.DAMAGED_SUFFIX}" in {
        info.base_name for info in remote.get_file_info(fs.FileSelector(store.path))
    }
    store.close()
