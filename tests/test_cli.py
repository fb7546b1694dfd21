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


def test_a_resume_with_nothing_left_to_train_is_one_line_and_writes_nothing(tmp_path, capsys):
    # before: `--resume --set train.num_train_epochs=1` on a 2-epoch checkpoint wrote train_loss: NaN
    from tunetrain.cli import main

    path = _experiment(tmp_path, eval_strategy="no", logging_strategy="no")
    params = json.dumps({"learning_rate": 0.01, "hidden": 4})
    assert main(["train", str(path), "--params", params]) == 0
    written = (tmp_path / "run" / "metrics.json").read_bytes()
    code = main(["train", str(path), "--params", params, "--resume", "--set", "train.num_train_epochs=1"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "tunetrain: error: nothing left to train: the checkpoint is at step 30, the end of this run's budget (15 "
        "steps); raise train.num_train_epochs or train.max_steps (--set) to train on"
    )
    assert (tmp_path / "run" / "metrics.json").read_bytes() == written
    # killed after its last checkpoint but before its final model: --resume writes that model, no step trained
    (tmp_path / "run" / "model.safetensors").unlink()
    assert main(["train", str(path), "--params", params, "--resume"]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_an_output_dir_holding_another_run_is_trained_into_only_to_resume_or_overwrite_it(tmp_path, capsys):
    # before: a second run mixed its checkpoints with the first's, and a later --resume took a stale one
    from tunetrain.cli import main

    path = _experiment(tmp_path, eval_strategy="no", logging_strategy="no", num_train_epochs=1)
    params = json.dumps({"learning_rate": 0.01, "hidden": 4})
    assert main(["train", str(path), "--params", params]) == 0
    assert main(["train", str(path), "--params", params]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tunetrain: error: output dir {str(tmp_path / 'run')!r} holds another run (checkpoint-15): --resume "
        "continues it, --overwrite-output-dir trains from scratch in its place, or give another --output-dir"
    )
    (tmp_path / "run" / "notes.txt").write_text("mine")
    (tmp_path / "run" / "checkpoint-99").mkdir()  # a stale one, as a killed earlier run leaves
    assert main(["train", str(path), "--params", params, "--overwrite-output-dir"]) == 0
    run = tmp_path / "run"
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-15"] and not (run / "checkpoint-99").exists()
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go


def test_train_never_writes_into_a_searchs_experiment_dir(tmp_path, capsys):
    from tunetrain.cli import main

    path = _experiment(tmp_path, output_dir=str(tmp_path / "runs" / "tiny"))
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "search.json").write_text("{}")
    assert main(["train", str(path), "--resume"]) == 2
    assert "is a search's experiment dir (it has search.json): give another --output-dir" in capsys.readouterr().err


def test_a_retrain_of_an_export_uses_as_many_threads_as_the_run_it_exports(tmp_path, capsys, monkeypatch):
    # before: a re-train gave the exported metric only with the trial's thread count set by hand
    import torch

    from tunetrain.cli import main

    path = _experiment(tmp_path, eval_strategy="no", logging_strategy="no", num_train_epochs=1)
    params = json.dumps({"learning_rate": 0.01, "hidden": 4})
    try:
        torch.set_num_threads(2)
        assert main(["train", str(path), "--params", params]) == 0
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_threads"] == 2
        torch.set_num_threads(1)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        capsys.readouterr()
        assert main(["train", str(tmp_path / "run"), "--output-dir", str(tmp_path / "again")]) == 0
        assert "2 torch thread(s), as the exported run had" in capsys.readouterr().err
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins
        torch.set_num_threads(1)
        assert main(["train", str(tmp_path / "run"), "--output-dir", str(tmp_path / "third")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


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
