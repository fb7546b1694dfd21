"""Export, load_model, the final fit from an experiment or export dir, and their bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TESTS

from tunetrain import (
    CheckpointError,
    ConfigError,
    Trainer,
    TrainingArguments,
    load_model,
    load_task,
    read_results,
    search,
)
from tunetrain import checkpoint as ckpt
from tunetrain.cli import main
from tunetrain.experiment import experiment_from_dict
from tunetrain.results import export_trials

pytestmark = pytest.mark.e2e

TINY = f"{TESTS / 'tiny_task.py'}:task"


def _search(storage: Path, name: str, *, num_trials: int = 4, **train) -> Path:
    """A small finished search (in-process Optuna backend: no Ray needed here); its experiment dir."""
    experiment = experiment_from_dict(
        {
            "name": name,
            "task": TINY,
            "train": {"num_train_epochs": 4, "per_device_train_batch_size": 16, "eval_strategy": "epoch",
                      "logging_strategy": "no", "metric_for_best_model": "accuracy", "report_to": "none", **train},
            "space": {"learning_rate": {"type": "float", "low": 1e-3, "high": 0.3, "log": True},
                      "hidden": {"type": "int", "low": 4, "high": 32}},
            "search": {"backend": "optuna", "num_trials": num_trials, "storage": str(storage), "scheduler": "none"},
        }
    )  # fmt: skip
    search(experiment)
    return storage / name


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> Path:
    return _search(tmp_path_factory.mktemp("storage"), "tiny-export")


@pytest.fixture(scope="module")
def peaked_dir(tmp_path_factory) -> Path:
    """A search whose trials peak at their first evaluations: its metric is the lowest accuracy, which training
    raises, so a trial's best checkpoint is an early one and its latest another."""
    return _search(tmp_path_factory.mktemp("storage"), "tiny-peaked", num_trials=2, greater_is_better=False)


def _eval_metric(model, metric: str) -> float:
    """The exported model scored on the task's eval split, as the search scored it."""
    args = TrainingArguments(output_dir="/tmp/unused", per_device_eval_batch_size=32)
    return Trainer(load_task(TINY), args, model=model).evaluate()[metric]


def test_export_the_best_trial_and_load_it_back(experiment_dir, tmp_path):
    result = read_results(experiment_dir)
    out = result.best.export(tmp_path / "best")
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "params.json", "metrics.json",
                                               "experiment.yaml", "README.md", ".tunetrain-export"}  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trial_id"] == result.best.trial_id
    assert metrics["best_metric"] == result.best.metric == max(t.best_metric for t in result.trials)
    assert json.loads((out / "params.json").read_text()) == result.best.params
    assert metrics["num_threads"] == 1  # the trial's (the tests' one thread), for `tunetrain train` of the export
    # the weights are the best checkpoint's (not the last): they score exactly the exported metric
    assert _eval_metric(load_model(out), "eval_accuracy") == metrics["best_metric"]
    assert "tunetrain.load_model" in (out / "README.md").read_text()


def test_the_export_holds_the_best_checkpoint_s_weights_not_the_latest(peaked_dir, tmp_path):
    best = read_results(peaked_dir).best
    latest = ckpt.find_latest(Path(best.checkpoint).parent)
    assert best.best_step < ckpt.checkpoint_step(latest)  # the fixture does what it is for
    out = best.export(tmp_path / "best")
    exported = (out / "model.safetensors").read_bytes()
    assert exported == (Path(best.checkpoint) / "model.safetensors").read_bytes()
    assert exported != (latest / "model.safetensors").read_bytes()
    assert _eval_metric(load_model(out), "eval_accuracy") == best.metric


def test_a_moved_experiment_exports_its_own_weights(tmp_path):
    original = _search(tmp_path / "runs", "tiny-moved", num_trials=1, num_train_epochs=2)
    best = read_results(original).best
    weights = (Path(best.checkpoint) / "model.safetensors").read_bytes()
    moved = Path(shutil.move(original, tmp_path / "elsewhere"))
    assert not original.exists()
    out = export_trials(moved, tmp_path / "best")[0]
    assert (out / "model.safetensors").read_bytes() == weights
    assert read_results(moved).best.checkpoint == best.checkpoint.replace(str(original), str(moved))


def test_a_copy_beside_its_original_exports_the_copy_s_weights(experiment_dir, tmp_path):
    copy = Path(shutil.copytree(experiment_dir, tmp_path / "copy"))
    ranked = read_results(copy).ranked()
    assert Path(ranked[0].checkpoint).is_relative_to(copy)
    # the copy's best checkpoint now holds other weights (the second trial's): its own, not the original's
    shutil.copyfile(Path(ranked[1].checkpoint) / "model.safetensors", Path(ranked[0].checkpoint) / "model.safetensors")
    out = export_trials(copy, tmp_path / "best")[0]
    exported = (out / "model.safetensors").read_bytes()
    assert exported == (Path(ranked[0].checkpoint) / "model.safetensors").read_bytes()
    assert exported != (Path(read_results(experiment_dir).best.checkpoint) / "model.safetensors").read_bytes()


def test_the_exported_experiment_retrains_to_the_same_metric(experiment_dir, tmp_path, capsys):
    out = export_trials(experiment_dir, tmp_path / "best")[0]
    assert main(["train", str(out / "experiment.yaml"), "--output-dir", str(tmp_path / "again")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["metrics"]["best_metric"] == json.loads((out / "metrics.json").read_text())["best_metric"]


def test_final_fit_from_an_experiment_dir_on_full_data(experiment_dir, tmp_path, capsys):
    code = main(["train", str(experiment_dir), "--full-data", "--set", "train.num_train_epochs=2",
                 "--output-dir", str(tmp_path / "final")])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "training the best trial" in captured.err
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert metrics["train_samples"] == 2 * (240 + 60)  # both splits, two epochs
    assert "test_accuracy" in metrics and "eval_accuracy" not in metrics
    assert json.loads((tmp_path / "final" / "params.json").read_text()) == read_results(experiment_dir).best.params
    assert load_model(tmp_path / "final") is not None  # the final fit is in exportable form too


def test_top_k_side_by_side(experiment_dir, tmp_path):
    paths = export_trials(experiment_dir, tmp_path / "top", top_k=3)
    ranked = read_results(experiment_dir).ranked()
    assert [p.name for p in paths] == [f"rank-{i}-{t.trial_id}" for i, t in enumerate(ranked[:3], start=1)]
    assert all((p / "model.safetensors").is_file() for p in paths)


def test_bad_export_input(experiment_dir, tmp_path, capsys):
    with pytest.raises(ConfigError, match="does not exist"):
        export_trials(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"trial 'nope' is not in"):
        export_trials(experiment_dir, tmp_path / "out", trial_id="nope")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["export", str(experiment_dir), "--out", str(tmp_path / "full")]) == 2
    assert "holds files that no export wrote (no .tunetrain-export in it)" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["export", str(experiment_dir), "--out", str(tmp_path / "full"), "--force"]) == 2
    assert "holds files that no export wrote" in capsys.readouterr().err  # --force replaces only an export
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["export", str(experiment_dir), "--out", str(tmp_path / "export")]) == 0
    assert main(["export", str(experiment_dir), "--out", str(tmp_path / "export")]) == 2
    assert "exists and is not empty (use --force" in capsys.readouterr().err
    assert main(["export", str(experiment_dir), "--out", str(tmp_path / "export"), "--force"]) == 0
    assert main(["export", str(experiment_dir), "--out", str(experiment_dir), "--force"]) == 2
    assert "is the experiment dir" in capsys.readouterr().err
    assert read_results(experiment_dir).best is not None  # the experiment is still there
    for top_k in ("0", "-1"):
        with pytest.raises(SystemExit, match="2"):
            main(["export", str(experiment_dir), "--out", str(tmp_path / "top"), "--top-k", top_k])
        assert f"argument --top-k: is {top_k}, but must be" in capsys.readouterr().err
    empty = tmp_path / "empty-experiment"
    empty.mkdir()
    (empty / "search.json").write_text(json.dumps({"experiment": {"name": "e", "task": TINY}}))
    with pytest.raises(ConfigError, match=r"has no results\.parquet"):
        export_trials(empty, tmp_path / "out2")


def test_weights_that_do_not_fit_the_model(experiment_dir, tmp_path):
    out = export_trials(experiment_dir, tmp_path / "best")[0]
    params = json.loads((out / "params.json").read_text())
    (out / "params.json").write_text(json.dumps({**params, "hidden": params["hidden"] + 1}))
    with pytest.raises(CheckpointError, match="from a different model"):
        load_model(out)


def test_report_command(experiment_dir, tmp_path, capsys):
    assert main(["report", str(experiment_dir), "--out", str(tmp_path / "report"), "--top-k", "3"]) == 0
    printed = capsys.readouterr().out
    best = read_results(experiment_dir).best
    assert best.trial_id in printed and "report.html" in printed
    html = (tmp_path / "report" / "report.html").read_text()
    assert best.trial_id in html and html.count('<img src="data:image/png;base64,') == 3
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
