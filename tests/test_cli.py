"""`tunetrain train` end to end (the real CLI in a subprocess) and its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TESTS

from tunetrain import checkpoint as ckpt
from tunetrain.cli import main

TINY = f"{TESTS / 'tiny_task.py'}:task"


def _experiment(tmp_path: Path, **train) -> Path:
    values = {"num_train_epochs": 2, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
              "save_strategy": "epoch", "logging_strategy": "epoch", "metric_for_best_model": "accuracy",
              "report_to": "none", "output_dir": str(tmp_path / "run"), **train}  # fmt: skip
    text = (
        f"name: tiny\ntask: {TINY}\ntrain: {json.dumps(values)}\n"
        "space:\n"
        "  learning_rate: {type: float, low: 1.0e-3, high: 0.1, log: true}\n"
        "  hidden: {type: int, low: 4, high: 32, default: 8}\n"
        "  dropout: {type: float, low: 0.0, high: 0.5, when: {hidden: [8, 16]}}\n"
    )
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tunetrain.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


@pytest.mark.e2e
def test_train_quickstart_end_to_end(tmp_path):
    out = tmp_path / "quick"
    result = _run("train", str(ROOT / "search_spaces" / "quickstart.yaml"), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["output_dir"] == str(out)
    assert "using the space's" in result.stderr  # says which params it picked
    metrics = summary["metrics"]
    assert metrics["test_accuracy"] > 0.4  # 10 classes: chance is 0.1
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == metrics["test_accuracy"]
    assert (out / "experiment.yaml").is_file() and (out / "README.md").is_file()  # the exportable form
    assert ckpt.list_checkpoints(out)


@pytest.mark.e2e
def test_train_with_params_then_resume(tmp_path):
    path = _experiment(tmp_path)
    params = json.dumps({"learning_rate": 0.01, "hidden": 16, "dropout": 0.2})
    first = _run("train", str(path), "--params", params)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["params"] == {"learning_rate": 0.01, "hidden": 16, "dropout": 0.2}
    # a longer budget, resumed from the latest checkpoint (step 30 = the end of epoch 2)
    second = _run("train", str(path), "--params", params, "--resume", "--set", "train.num_train_epochs=3")
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stderr and "at step 30" in second.stderr
    state = json.loads((tmp_path / "run" / "checkpoint-45" / ckpt.TRAINER_STATE_NAME).read_text())
    assert state["global_step"] == 45


@pytest.mark.e2e
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntask: a:b\ntrain: {learning_rat: 0.1}\n")
    result = _run("train", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr
    assert "`train.learning_rat` is not a TrainingArguments field (did you mean `learning_rate`?)" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--params", '{"hidden": 1000}'], "hidden"),
        (["--params", '{"dropout": 0.1, "hidden": 4}'], "dropout"),  # its condition is false
        (["--params", "{not json"], "--params is not valid JSON"),
        (["--params", "missing.json"], "neither a JSON object nor an existing JSON file"),
        (["--resume"], "there is no checkpoint in"),
        (["--resume", "/no/such/checkpoint"], "checkpoint '/no/such/checkpoint' does not exist"),
        (["--set", "task=no_such_module:task"], "no module named 'no_such_module'"),
        (["--set", f"task={TESTS / 'tiny_task.py'}:nothing"], "has no attribute 'nothing'"),
        (["--set", "train.eval_strategy=no", "--set", "train.load_best_model_at_end=true"], "needs an evaluation"),
        (["--set", "train.metric_for_best_model=f1"], "`metric_for_best_model` is 'f1', but the evaluation returned"),
    ],
)
def test_bad_input_in_process(tmp_path, capsys, extra, message):
    code = main(["train", str(_experiment(tmp_path)), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.strip().splitlines()[-1].startswith("tunetrain: error: ")


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["export", "runs/x", "--out", "best", "--top-k", "0"], "0"),
        (["export", "runs/x", "--out", "best", "--top-k", "-1"], "-1"),
        (["report", "runs/x", "--top-k", "0"], "0"),
        (["report", "runs/x", "--top-k", "two"], "'two'"),
    ],
)
def test_top_k_must_be_a_whole_number_from_one(capsys, argv, shown):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err == f"tunetrain: error: argument --top-k: is {shown}, but must be a whole number >= 1\n"


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train"])
    assert caught.value.code == 2
    assert capsys.readouterr().err.startswith("tunetrain: error: ")
