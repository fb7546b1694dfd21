"""Data-parallel runs on the CPU (gloo): two processes train as one process with twice the batch, resume exactly
after a kill, and say how many processes made their metrics."""

from __future__ import annotations

from pathlib import Path

import ddp_runs  # spawned processes import it by name (the tests dir is on their path too)
import numpy as np
import pytest
import torch

from tunetrain import checkpoint as ckpt
from tunetrain.errors import ConfigError, ProcessFailedError
from tunetrain.launch import launch
from tunetrain.prediction import Gathered

# 240 training examples: 15 global batches of 16 an epoch, whether 1 x 16 or 2 x 8
ARGS = dict(
    num_train_epochs=2,
    learning_rate=0.05,
    logging_steps=1,
    eval_strategy="epoch",
    save_strategy="no",
    report_to="none",
    seed=3,
    metric_for_best_model="accuracy",
    per_device_eval_batch_size=7,  # 60 eval examples: the processes' shares are uneven
)


def test_interleaved_batches_come_back_in_the_datasets_order():
    parts = [Gathered(), Gathered()]
    for index in range(5):  # process 0 scored batches 0, 2, 4; process 1 batches 1, 3
        parts[index % 2].add(torch.full((2,), float(index)), torch.tensor([index, index]))
    predictions, labels = Gathered.interleaved(parts).result()
    assert predictions.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


@pytest.mark.e2e
def test_two_processes_follow_one_process_with_twice_the_batch(tmp_path):
    no_dropout = {"dropout": 0.0}
    one = launch(
        ddp_runs.fit, ({**ARGS, "output_dir": str(tmp_path / "one"), "per_device_train_batch_size": 16}, no_dropout),
        nproc=1, threads=1,
    )  # fmt: skip
    two = launch(
        ddp_runs.fit, ({**ARGS, "output_dir": str(tmp_path / "two"), "per_device_train_batch_size": 8}, no_dropout),
        nproc=2, threads=1,
    )  # fmt: skip
    losses = [[entry["loss"] for entry in run["log_history"] if "loss" in entry] for run in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 30  # every step logged
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert round(two["metrics"]["eval_accuracy"], 3) == round(one["metrics"]["eval_accuracy"], 3)
    assert two["metrics"]["eval_loss"] == pytest.approx(one["metrics"]["eval_loss"], rel=1e-4)
    assert (one["metrics"]["num_processes"], two["metrics"]["num_processes"]) == (1, 2)
    assert two["metrics"]["train_samples"] == one["metrics"]["train_samples"] == 480
    # the predictions come back whole and in the dataset's order, from processes that scored 5 and 4 batches
    np.testing.assert_allclose(two["predictions"], one["predictions"], rtol=1e-4, atol=1e-5)
    assert two["predictions"].shape == (60, 4)


@pytest.mark.e2e
def test_a_killed_two_process_run_resumes_to_the_same_weights_bitwise(tmp_path):
    # dropout: each process draws its own masks, so each process's RNG must come back
    args = {**ARGS, "per_device_train_batch_size": 8, "save_strategy": "steps", "save_steps": 5}
    params = {"dropout": 0.2}
    whole = launch(ddp_runs.fit, ({**args, "output_dir": str(tmp_path / "whole")}, params), nproc=2, threads=1)
    killed = str(tmp_path / "killed")
    with pytest.raises(ProcessFailedError, match="process 0 of the run was killed by signal 9"):
        launch(ddp_runs.fit, ({**args, "output_dir": killed}, params, False, 23), nproc=2, threads=1)
    latest = ckpt.find_latest(killed)
    assert latest.name == "checkpoint-20"  # mid-epoch: an epoch is 15 steps
    assert (latest / ckpt.rng_state_name(1)).is_file()  # the second process's RNG, written by the main one
    resumed = launch(ddp_runs.fit, ({**args, "output_dir": killed}, params, True), nproc=2, threads=1)
    assert resumed["weights"].keys() == whole["weights"].keys()
    for name, tensor in whole["weights"].items():
        assert torch.equal(resumed["weights"][name], tensor), name
    assert ckpt.read_trainer_state(ckpt.find_latest(killed)).num_processes == 2


@pytest.mark.e2e
def test_processes_stop_together_and_evaluate_a_model_with_buffers_where_one_has_no_share(tmp_path):
    # the main process's reporter stops the run at step 7 (not a log step: logs every 4): every process stops at
    # the next log step, together. One batch of 60 evaluation examples: the second process scores none, and the
    # model's BatchNorm buffers, which DDP broadcasts in its forward, must not make it wait for the first
    args = {**ARGS, "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 8, "logging_steps": 4,
            "eval_strategy": "steps", "eval_steps": 4, "per_device_eval_batch_size": 60}  # fmt: skip
    run = launch(ddp_runs.fit, (args, {"batchnorm": True}, False, None, 7), nproc=2, threads=1)
    assert run["global_step"] == 8 and run["metrics"]["stopped"] == "asked"
    assert run["predictions"].shape == (60, 4)


def test_nproc_must_be_a_whole_number():
    with pytest.raises(ConfigError, match="--nproc is 0"):
        launch(ddp_runs.fit, ({}, {}), nproc=0)


@pytest.mark.e2e
def test_train_on_two_processes_from_the_command_line(tmp_path):
    import json
    import subprocess

    from slow_search import cli, env

    out = tmp_path / "cnn"
    done = subprocess.run(
        cli("train", "search_spaces/mnist1d_cnn.yaml", "--nproc", "2", "--output-dir", str(out),
            "--set", "train.num_train_epochs=1"),
        env=env(), capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["num_threads"] == 1
    assert json.loads(done.stdout.splitlines()[-1])["metrics"]["num_processes"] == 2
    assert (out / "model.safetensors").is_file() and (out / "experiment.yaml").is_file()
    # the same user error in both processes: one line, exit 2, no launcher traceback
    bad = subprocess.run(
        cli("train", "search_spaces/mnist1d_cnn.yaml", "--nproc", "2", "--output-dir", str(tmp_path / "bad"),
            "--set", "train.num_train_epochs=1", "--set", "train.metric_for_best_model=nope"),
        env=env(), capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("tunetrain: error: `metric_for_best_model` is 'nope'")
    assert "Traceback" not in bad.stderr
