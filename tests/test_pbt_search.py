"""PBT and successive halving that pauses, end to end through the real CLI on the quickstart's task (MNIST-1D MLP).

- PBT with a population of 4, its driver SIGKILLed mid-way, resumes and finishes: its exploits recorded with their
  parents, every exploit's checkpoint there, no param outside the space, and the export of an exploited trial
  re-trains to its metric exactly (its lineage replayed as a schedule);
- a pausing ASHA pauses the first trials at a rung and resumes the best of them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from slow_search import cli, env, kill_search, start_search, wait_for

from tunetrain.results import read_history, read_results
from tunetrain.space import SearchSpace
from tunetrain.storage.layout import EXPLOIT_DIR, LINEAGE_NAME

pytestmark = [pytest.mark.e2e]

SPACE = {
    "learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.2},
    "hidden_size": {"type": "int", "low": 32, "high": 256, "log": True},
}


def _experiment(tmp_path: Path, name: str, *, epochs: int, num_trials: int, scheduler: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    experiment = {
        "name": name,
        "task": "tunetrain.tasks.mnist1d:mlp",
        "train": {"num_train_epochs": epochs, "per_device_train_batch_size": 64, "per_device_eval_batch_size": 500,
                  "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "logging_strategy": "epoch",
                  "eval_strategy": "epoch", "save_strategy": "epoch", "metric_for_best_model": "accuracy"},
        "space": SPACE,
        "search": {"num_trials": num_trials, "max_concurrent_trials": 2, "scheduler": scheduler, "seed": 0,
                   "storage": str(tmp_path / "runs")},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(cli(*args), env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _every_row_in_the_space(exp_dir: Path) -> list[dict]:
    space = SearchSpace.from_mapping(SPACE)
    rows = read_history(str(exp_dir))
    for row in rows:  # validate raises on any value outside its range
        assert space.validate(json.loads(row["params"]), require_all=True) == json.loads(row["params"])
    return rows


EPOCHS = 14  # an evaluation each: 7 perturbation rounds of a trial (20 cost ~10 s more of the suite)


def test_a_pbt_search_killed_mid_way_resumes_stays_in_the_space_and_its_exploited_trial_re_trains_exactly(tmp_path):
    # (an uninterrupted PBT search, exported and re-trained, is examples/pbt.py, run by test_examples.py)
    scheduler = {"type": "pbt", "perturbation_interval": 2}
    experiment = _experiment(tmp_path, "pk", epochs=EPOCHS, num_trials=4, scheduler=scheduler)
    exp_dir = tmp_path / "runs" / "pk"
    driver = start_search(experiment)
    try:
        assert wait_for(lambda: len(list(exp_dir.glob(f"trials/*/{LINEAGE_NAME}"))) >= 2, driver), "no exploit"
    finally:
        kill_search(driver)
    _run("search", str(experiment))
    result = read_results(str(exp_dir))
    assert result.counts()["completed"] == 4
    assert not list(exp_dir.glob(f"trials/*/{EXPLOIT_DIR}"))  # every exploit decided was taken up
    known = {trial.trial_id for trial in result.trials}
    exploited = [trial for trial in result.trials if trial.parent]
    assert exploited, "no trial was exploited"
    for trial in result.trials:
        assert trial.evaluations == EPOCHS and Path(trial.best_checkpoint, "model.safetensors").is_file()
        for exploit in trial.parent or []:
            assert exploit["trial_id"] in known and exploit["trial_id"] != trial.trial_id
        if trial.parent:
            segments = json.loads((exp_dir / "trials" / trial.trial_id / LINEAGE_NAME).read_text())["segments"]
            assert segments[-1]["parent"] == trial.parent[-1]["trial_id"]
    rows = _every_row_in_the_space(exp_dir)
    exploits = {(trial.trial_id, e["trial_id"], e["step"]) for trial in exploited for e in trial.parent}
    marked = {(row["trial_id"], row["parent"], row["parent_step"]) for row in rows if row["parent"]}
    assert marked and marked <= exploits  # a history row says where it came from, as the results do
    for trial in result.trials:  # every evaluation since its last exploit is in the history, once
        since = [row for row in rows if row["trial_id"] == trial.trial_id]
        start = max((i for i, row in enumerate(since) if row["parent"]), default=0)
        numbers = [row["evaluation"] for row in since[start:]]
        assert numbers == list(range(numbers[0], EPOCHS + 1))

    # the trial exploited most re-trains, from its export (its lineage as a schedule), to its metric exactly
    chosen = max(exploited, key=lambda trial: (len(trial.parent), trial.best_metric))
    _run("export", str(exp_dir), "--trial", chosen.trial_id, "--out", str(tmp_path / "export"))
    written = yaml.safe_load((tmp_path / "export" / "experiment.yaml").read_text())
    assert written["schedule"] and written["schedule"][-1]["trial"] == chosen.trial_id
    retrained = _run("train", str(tmp_path / "export"), "--output-dir", str(tmp_path / "retrained"))
    metrics = json.loads(retrained.stdout.strip().splitlines()[-1])["metrics"]
    assert (metrics["best_metric"], metrics["best_global_step"]) == (chosen.best_metric, chosen.best_step)
    assert _evaluations(tmp_path / "retrained") == _evaluations(exp_dir / "trials" / chosen.trial_id)  # bitwise

    _run("report", str(exp_dir))
    assert (exp_dir / "population.png").is_file()


def test_a_pausing_asha_pauses_the_first_trials_at_a_rung_and_resumes_the_best_of_them(tmp_path):
    scheduler = {"type": "asha", "promote": True, "grace_period": 1, "reduction_factor": 3}
    experiment = _experiment(tmp_path, "promote", epochs=9, num_trials=9, scheduler=scheduler)
    _run("search", str(experiment))
    exp_dir = tmp_path / "runs" / "promote"
    result = read_results(str(exp_dir))
    counts = result.counts()
    assert counts["pruned"] >= 5 and counts["completed"] >= 1 and counts["errored"] == 0
    assert {trial.evaluations for trial in result.trials if trial.status == "completed"} == {9}
    assert {trial.evaluations for trial in result.trials if trial.status == "pruned"} <= {1, 3}
    # the first trial is alone at rung 1: it goes on only once 3 trials are there and it is their best
    first = min(result.trials, key=lambda trial: trial.number)
    started = {trial.trial_id: trial.started_at for trial in result.trials}
    at = {
        (row["trial_id"], row["evaluation"]): started[row["trial_id"]] + row["time_s"]
        for row in read_history(str(exp_dir))
    }
    if first.evaluations > 1:
        before = {trial for (trial, evaluation), time in at.items() if evaluation == 1 and time < at[first.trial_id, 2]}
        assert len(before) >= 3
    total = sum(trial.evaluations for trial in result.trials)
    assert total <= 9 + 9 + 3 * 3 + 9  # far below the 81 evaluations of 9 trials trained whole


def _evaluations(run_dir: Path) -> list[tuple[int, float]]:
    """(step, eval_loss) of every evaluation the run's latest checkpoint logged."""
    from tunetrain import checkpoint as ckpt

    state = ckpt.read_trainer_state(ckpt.find_latest(run_dir))
    return [(entry["step"], entry["eval_loss"]) for entry in state.log_history if "eval_loss" in entry]
