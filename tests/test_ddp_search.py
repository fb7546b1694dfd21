"""A search whose trials each train on two processes (Ray Train inside Ray Tune, gloo on the CPU), through the real
CLI: it finishes, ASHA stops some trials, every trial says it trained on 2 processes, and a SIGKILLed driver
resumes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from slow_search import cli, env, kill_search, start_search, wait_for

from tunetrain.results import read_results

pytestmark = [pytest.mark.e2e]


def _quickstart(tmp_path: Path) -> Path:
    """The quickstart, with trials of two workers of one CPU each (a local Ray of 2 CPUs holds one at a time)."""
    experiment = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    experiment["name"] = "ddp"
    experiment["train"]["num_train_epochs"] = 3
    experiment["search"].update(
        num_trials=3, storage=str(tmp_path / "runs"), resources_per_trial={"workers": 2, "cpu": 1}
    )
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


def _partway(exp_dir: Path) -> str | None:
    """A trial with a checkpoint of its own that has not ended (the first trial, which ASHA lets go
    on; the others it stops at their first), or None."""
    for trial in (exp_dir / "trials").glob("*"):
        steps = [int(c.name.split("-")[1]) for c in trial.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
        if steps and max(steps) >= 28 and not (trial / "ended.json").exists():  # 28 steps an epoch
            return trial.name
    return None


def test_a_search_of_two_process_trials_finishes_prunes_and_resumes_after_a_kill(tmp_path):
    experiment = _quickstart(tmp_path)
    exp_dir = tmp_path / "runs" / "ddp"
    driver = start_search(experiment)
    try:
        # the first trial (which ASHA lets go on) partway, with a checkpoint of its own to resume from
        assert wait_for(lambda: _partway(exp_dir), driver, timeout=300), "the search never got partway"
    finally:
        kill_search(driver)
    killed = _partway(exp_dir)
    rerun = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming experiment 'ddp'" in rerun.stderr
    assert re.search(r"^trial\s+eval_accuracy\s+status\s+evals\s+processes\s", rerun.stdout + rerun.stderr, re.M)
    results = read_results(exp_dir)
    statuses = [t.status for t in results.trials]
    assert len(statuses) == 3 and set(statuses) <= {"completed", "pruned"}, statuses
    assert "pruned" in statuses  # ASHA stopped the whole trial (its coordinator, and with it both workers)
    assert {t.num_processes for t in results.trials} == {2}
    resumed = next(t for t in results.trials if t.trial_id == killed)
    assert resumed.status == "completed" and resumed.evaluations == 3  # it went on from its checkpoint to the end
    best = results.best
    assert best.num_processes == 2 and Path(best.best_checkpoint).is_dir()
