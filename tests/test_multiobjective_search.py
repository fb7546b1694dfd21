"""A search on two objectives end to end, through the real CLI, on both backends: the quickstart's MLP on MNIST-1D,
accuracy against parameters (`search_spaces/mnist1d_multiobjective.yaml`), 16 trials, ASHA on Pareto rank.

It finishes, stops some trials at a rung, flags exactly the non-dominated finished trials `pareto`, exports the front
one folder per trial, each loadable, and a single best is refused in one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from slow_search import cli, env

import tunetrain
from tunetrain.results import read_results
from tunetrain.tuning.pareto import dominates

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]


def _experiment(tmp_path: Path, backend: str) -> Path:
    experiment = yaml.safe_load((ROOT / "search_spaces" / "mnist1d_multiobjective.yaml").read_text())
    experiment["name"] = f"mo-{backend}"
    experiment["train"]["num_train_epochs"] = 4  # rungs at 1 and 3 evaluations
    experiment["search"].update(backend=backend, num_trials=16, storage=str(tmp_path / "runs"))
    path = tmp_path / f"mo-{backend}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def _evaluate(model, tmp_path: Path) -> float:
    """The model's eval accuracy on the experiment's task, as the search scored it."""
    from tunetrain import Trainer, TrainingArguments
    from tunetrain.task import load_task

    args = TrainingArguments(output_dir=str(tmp_path / "scored"), per_device_eval_batch_size=500)
    return Trainer(load_task("tunetrain.tasks.mnist1d:mlp"), args, model=model).evaluate()["eval_accuracy"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), env=env(), capture_output=True, text=True, timeout=400)


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_two_objective_search_stops_early_flags_its_front_and_exports_it(tmp_path, backend):
    done = _run("search", str(_experiment(tmp_path, backend)))
    assert done.returncode == 0, done.stderr[-3000:]
    exp_dir = tmp_path / "runs" / f"mo-{backend}"
    result = read_results(str(exp_dir))
    assert result.metrics == ("eval_accuracy", "eval_num_parameters") and result.modes == ("max", "min")
    counts = result.counts()
    assert len(result.trials) == 16 and counts["running"] == counts["errored"] == 0
    assert counts["pruned"] > 0, "no trial was stopped at a rung"
    for trial in result.trials:
        if trial.status == "pruned":
            assert trial.evaluations in (1, 3)  # stopped at a rung
    finished = [t for t in result.trials if t.status in ("completed", "stopped_early")]
    front = [t for t in finished if t.pareto]
    assert front and not any(t.pareto for t in result.trials if t not in finished)
    for trial in finished:
        dominated = any(dominates(other.objectives, trial.objectives, result.modes) for other in front)
        assert trial.pareto is not dominated, (trial.trial_id, trial.objectives)
    # the search's last line is the front, as JSON
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert {entry["trial_id"] for entry in printed["pareto"]} == {t.trial_id for t in front}
    if backend == "ray":  # the study's journal (optuna-dashboard) has both objectives' values of each completed trial
        import optuna

        from tunetrain.tuning.optuna import journal_storage

        study = optuna.load_study(study_name="mo-ray", storage=journal_storage(exp_dir))
        assert len(study.directions) == 2
        told = sorted(tuple(t.values) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
        assert told == sorted(tuple(t.objectives) for t in result.trials if t.status == "completed")

    # export the front, a folder a trial, each loadable; one best is refused in one line, --by picks on the front
    out = tmp_path / "front"
    exported = _run("export", str(exp_dir), "--pareto", "--out", str(out))
    assert exported.returncode == 0, exported.stderr[-2000:]
    folders = sorted(path.name for path in out.iterdir() if path.is_dir())
    assert folders == sorted(f"pareto-{n}-{t.trial_id}" for n, t in enumerate(result.pareto, start=1))
    for folder in folders:
        model = tunetrain.load_model(out / folder)
        trial = next(t for t in front if t.trial_id == folder.split("-", 2)[2])
        assert sum(p.numel() for p in model.parameters()) == trial.objectives[1]
        metrics = json.loads((out / folder / "metrics.json").read_text())
        assert metrics["pareto"] is True and metrics["best_step"] == trial.best_step
        assert metrics["objectives"] == dict(zip(result.metrics, trial.objectives, strict=True))
    # the weights are those of the evaluation that scored the trial's values: scored again, the same accuracy
    evaluated = _evaluate(tunetrain.load_model(out / folders[0]), tmp_path)
    assert evaluated == next(t for t in front if folders[0].endswith(t.trial_id)).objectives[0]
    if backend == "ray":  # the rest reads only the results: the same on either backend
        return
    refused = _run("export", str(exp_dir), "--out", str(tmp_path / "best"))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "has 2 objectives" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    refused = _run("train", str(exp_dir))  # the final fit of a search of two objectives needs the same choice
    assert refused.returncode == 2 and "has 2 objectives" in refused.stderr and "Traceback" not in refused.stderr
    smallest = _run("export", str(exp_dir), "--by", "num_parameters", "--out", str(tmp_path / "small"))
    assert smallest.returncode == 0, smallest.stderr[-2000:]
    size = sum(p.numel() for p in tunetrain.load_model(tmp_path / "small").parameters())
    assert size == min(t.objectives[1] for t in front)
