"""A run whose params change at given steps (a PBT trial's lineage) replays the search's trial exactly."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunetrain import Trainer, TrainingArguments
from tunetrain import checkpoint as ckpt
from tunetrain.errors import ConfigError
from tunetrain.experiment import experiment_from_dict
from tunetrain.schedule import ScheduleStep, parse_schedule, train_on_schedule

FIRST = {"hidden": 8, "learning_rate": 0.02, "weight_decay": 0.0}
LATER = {"hidden": 8, "learning_rate": 0.005, "weight_decay": 0.1}


def _args(output_dir: Path, **overrides) -> TrainingArguments:
    values = dict(
        output_dir=str(output_dir), num_train_epochs=3, per_device_train_batch_size=16, lr_scheduler_type="cosine",
        warmup_ratio=0.1, eval_strategy="epoch", save_strategy="epoch", logging_strategy="epoch",
        metric_for_best_model="accuracy", disable_tqdm=True, report_to="none",
    )  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def _eval_losses(checkpoint: Path) -> list[float]:
    return [e["eval_loss"] for e in ckpt.read_trainer_state(checkpoint).log_history if "eval_loss" in e]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


def _as_in_a_search(tmp_path: Path, tiny_task) -> Path:
    """The donor trains FIRST all the way; the receiver takes a copy of its step-15 checkpoint and goes on with
    LATER (what PBT does); the receiver's last checkpoint."""
    Trainer(tiny_task, _args(tmp_path / "donor")).train(trial=FIRST)
    shutil.copytree(tmp_path / "donor" / "checkpoint-15", tmp_path / "receiver" / "checkpoint-15")
    Trainer(tiny_task, _args(tmp_path / "receiver")).train(trial=LATER, resume_from_checkpoint=True)
    return tmp_path / "receiver" / "checkpoint-45"


def test_a_schedule_replays_a_trial_that_went_on_from_anothers_checkpoint_exactly(tmp_path, tiny_task):
    searched = _as_in_a_search(tmp_path, tiny_task)
    make = lambda args, reporters: Trainer(tiny_task, args, reporters=reporters)  # noqa: E731
    trainer, output = train_on_schedule(make, _args(tmp_path / "replay"), FIRST, (ScheduleStep(15, LATER, "r"),))
    replayed = tmp_path / "replay" / "checkpoint-45"
    assert output.global_step == 45 and trainer.params == LATER
    assert _eval_losses(replayed) == _eval_losses(searched)  # every evaluation, to the last bit
    assert all(torch.equal(a, b) for a, b in zip(_weights(replayed).values(), _weights(searched).values(), strict=True))


def test_a_scheduled_run_resumed_mid_way_starts_in_the_segment_of_its_checkpoint(tmp_path, tiny_task):
    make = lambda args, reporters: Trainer(tiny_task, args, reporters=reporters)  # noqa: E731
    schedule = (ScheduleStep(15, LATER),)
    train_on_schedule(make, _args(tmp_path / "whole"), FIRST, schedule)
    shutil.copytree(tmp_path / "whole" / "checkpoint-30", tmp_path / "part" / "checkpoint-30")
    trainer, _ = train_on_schedule(make, _args(tmp_path / "part"), FIRST, schedule, resume=True)
    assert trainer.params == LATER
    assert _eval_losses(tmp_path / "part" / "checkpoint-45") == _eval_losses(tmp_path / "whole" / "checkpoint-45")


def test_a_schedule_step_where_the_run_saves_no_checkpoint_is_one_clear_error(tmp_path, tiny_task):
    make = lambda args, reporters: Trainer(tiny_task, args, reporters=reporters)  # noqa: E731
    with pytest.raises(
        ConfigError,
        match=re.escape("`schedule[0].step` is 7, but the run saved no checkpoint there (it stopped at step 7)"),
    ):
        train_on_schedule(make, _args(tmp_path / "run"), FIRST, (ScheduleStep(7, LATER),))


def test_the_schedule_section_is_checked_key_by_key():
    problems: list[str] = []
    parse_schedule(
        [{"step": 5, "params": {}}, {"step": 5, "params": {}}, {"step": 9, "params": 1, "when": 2}, 3],
        "schedule",
        problems,
    )
    assert problems == [
        "`schedule[1].step` is 5, but must be an integer > the step before (5)",
        "`schedule[2].when` is not a schedule key (step, params, trial)",
        "`schedule[2].params` is 1, but must be a mapping of param -> value",
        "`schedule[3]` is 3, but must be a mapping {step: N, params: {...}}",
    ]
    with pytest.raises(ConfigError, match=re.escape("`schedule[0].params.learning_rate` is -1")):
        experiment_from_dict({"name": "x", "task": "tiny_task:task", "params": {"hidden": 4},
                              "schedule": [{"step": 3, "params": {"learning_rate": -1}}]})  # fmt: skip
    with pytest.raises(ConfigError, match=re.escape("there is no `params` (those of step 0)")):
        experiment_from_dict(
            {"name": "x", "task": "tiny_task:task", "schedule": [{"step": 3, "params": {"hidden": 4}}]}
        )


def test_tunetrain_train_replays_a_schedule_and_keeps_it_with_the_final_model(tmp_path, capsys):
    from tunetrain.cli import main

    path = tmp_path / "experiment.yaml"
    train = {"num_train_epochs": 3, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
             "save_strategy": "epoch", "metric_for_best_model": "accuracy",
             "output_dir": str(tmp_path / "run")}  # fmt: skip
    experiment = {"name": "sched", "task": "tiny_task:task", "train": train, "params": FIRST,
                  "schedule": [{"step": 15, "params": LATER, "trial": "r"}]}  # fmt: skip
    path.write_text(yaml.safe_dump(experiment))
    assert main(["train", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["params"] == LATER
    written = yaml.safe_load((tmp_path / "run" / "experiment.yaml").read_text())
    assert written["params"] == FIRST and written["schedule"] == experiment["schedule"]
    assert json.loads((tmp_path / "run" / "params.json").read_text()) == LATER
    assert main(["train", str(path), "--params", json.dumps(FIRST), "--output-dir", str(tmp_path / "b")]) == 2
    assert "--params gives the params of a whole run, but the experiment's `schedule`" in capsys.readouterr().err


def test_a_chain_of_two_exploits_replays_exactly(tmp_path, tiny_task):
    # A trains FIRST; B goes on from A's step 15 with LATER; C from B's step 30 with THIRD: C's lineage, replayed
    third = {"hidden": 8, "learning_rate": 0.001, "weight_decay": 0.05}
    _as_in_a_search(tmp_path, tiny_task)  # donor (A) and receiver (B)
    shutil.copytree(tmp_path / "receiver" / "checkpoint-30", tmp_path / "c" / "checkpoint-30")
    Trainer(tiny_task, _args(tmp_path / "c")).train(trial=third, resume_from_checkpoint=True)
    make = lambda args, reporters: Trainer(tiny_task, args, reporters=reporters)  # noqa: E731
    schedule = (ScheduleStep(15, LATER, "b"), ScheduleStep(30, third, "c"))
    train_on_schedule(make, _args(tmp_path / "replay"), FIRST, schedule)
    searched, replayed = tmp_path / "c" / "checkpoint-45", tmp_path / "replay" / "checkpoint-45"
    assert _eval_losses(replayed) == _eval_losses(searched)
    assert all(torch.equal(a, b) for a, b in zip(_weights(replayed).values(), _weights(searched).values(), strict=True))
