"""`tunetrain search` end to end through the real CLI: a driver killed with SIGKILL resumes on rerun; bad input."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from conftest import TESTS
from slow_search import (
    EPOCH,
    STEPS,
    check_resumed,
    check_runs,
    checkpoints_left,
    cli,
    complete_checkpoints,
    env,
    kill_search,
    runs_of,
    saving,
    slow_search,
    start_search,
    wait_for,
    wait_until_partway,
    write_experiment,
)

from tunetrain.results import read_results

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listening_addresses(pid: int) -> set[str]:
    """The addresses the process and its descendants listen on."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # a worker that just exited
            continue
    return found


@pytest.mark.parametrize(
    "ray_env",
    [
        # Ray's own periodic snapshots off: its saved state is then the one from each trial's first and last
        # report (the token checkpoints), older than the trials that ended or evaluated since. (With Ray's
        # defaults, the kills of the next test; a case of its own here cost ~35 s of the suite.)
        {"TUNE_GLOBAL_CHECKPOINT_S": "100000"},
    ],
    ids=["no-periodic-snapshots"],
)
def test_sigkilled_search_resumes_without_rerunning_completed_trials(tmp_path, ray_env):
    logs, experiment = slow_search(tmp_path, num_trials=4)  # 2 done before the kill, 2 to resume or start
    exp_dir = tmp_path / "runs" / "killed"

    driver = start_search(experiment, **ray_env)
    try:
        done_before = wait_until_partway(str(exp_dir), driver, finished=2)
        assert done_before, "the search did not get far enough to be killed"
    finally:
        kill_search(driver)  # the driver and the local Ray it started (waits for the last of them to end)
    # the worst case of a kill between Ray deleting a trial's older token checkpoint and saving the snapshot that
    # points to the newer one: only each trial's newest token is left (the resume puts back the others)
    for trial_dir in exp_dir.glob("trial_*"):
        for token in sorted(trial_dir.glob("checkpoint_*"))[:-1]:
            shutil.rmtree(token)
    left = checkpoints_left(exp_dir, logs)  # where each trial's next run must start

    rerun = subprocess.run(
        cli("search", str(experiment)), env=env(**ray_env), capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming experiment 'killed'" in rerun.stderr
    results = read_results(exp_dir)
    assert len(results.trials) == 4
    assert {t.status for t in results.trials} == {"completed"}
    check_resumed(logs, results, done_before, left)
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"


def test_a_search_killed_again_and_again_at_random_points_loses_no_completed_trial_nor_checkpoint(tmp_path):
    # kills land while Ray starts or restores, mid-trial, mid-checkpoint (each save takes 0.3 s) or mid-results
    logs, experiment = slow_search(tmp_path, save_delay=0.3)
    exp_dir = tmp_path / "runs" / "killed"
    rng = random.Random(6)
    completed: dict[str, float] = {}  # trial id -> ended_at, of the trials the results said completed
    kills: list[dict[str, tuple[int, int]]] = []  # after each kill: each trial's runs so far and latest checkpoint
    for number in range(2):  # one kill mid-checkpoint, one at a random point (a third cost ~20 s of the suite)
        driver = start_search(experiment)
        if number == 0:  # the first kill lands while a trial writes a checkpoint (driver and workers at once)
            assert wait_for(lambda: saving(exp_dir), driver), "no checkpoint was written"
        else:  # the others at a random point after this run's first checkpoint
            before = complete_checkpoints(exp_dir)
            wrote_one = lambda before=before: complete_checkpoints(exp_dir) - before  # noqa: E731
            assert wait_for(wrote_one, driver), "the rerun wrote no checkpoint"
            time.sleep(rng.uniform(0, 4))
        kill_search(driver)
        if number == 0:
            assert saving(exp_dir), "the kill did not land in the middle of a checkpoint"  # its partial copy is left
        kills.append(checkpoints_left(exp_dir, logs))
        results = read_results(exp_dir, missing_ok=True)
        for trial in results.trials if results else []:
            if trial.trial_id in completed:
                assert (trial.status, trial.ended_at) == ("completed", completed[trial.trial_id])
            elif trial.status == "completed":
                completed[trial.trial_id] = trial.ended_at

    # and the last kill cut Ray's own snapshot short (Ray overwrites it in place): the search resumes from the copy
    # it sealed
    newest = sorted(exp_dir.glob("experiment_state-*.json"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    rerun = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(
        rf"Ray's saved state [^\n]*{re.escape(newest.name)}[^\n]* was not the copy tunetrain sealed", rerun.stderr
    )
    results = read_results(exp_dir)
    done = [t for t in results.trials if t.status == "completed"]
    assert len(done) == 6 and sorted(t.params["hidden"] for t in done) == list(range(4, 16, 2))
    assert all(t.evaluations == STEPS // EPOCH for t in done)
    for trial in results.trials:
        if trial.trial_id in completed:
            assert (trial.status, trial.ended_at) == ("completed", completed[trial.trial_id])  # not run again
        runs = [steps for _, steps in runs_of(logs, trial.trial_id)]
        left = [kill[trial.trial_id] for kill in kills if trial.trial_id in kill]
        if trial.status == "completed":
            # each run resumed from the latest complete checkpoint the run before it left (its dir, at each kill)
            check_runs(logs, trial.trial_id, left=left)
        else:
            # started after Ray last saved its state, killed before its first checkpoint reached that state
            assert trial.status == "errored" and trial.error.startswith("lost:"), (trial.status, trial.error)
            assert sum(runs) <= 2 * EPOCH, runs
            if runs:  # any run it had resumed like any other
                check_runs(logs, trial.trial_id, left=left, completed=False)
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"


PAYLOAD = """
import os, pickle, sys

class Payload:
    def __reduce__(self):
        return (os.mkdir, ({marker!r},))

sys.stdout.buffer.write(pickle.dumps(Payload()))
"""


def test_code_planted_in_rays_saved_state_never_runs_and_the_search_resumes_from_what_it_sealed(tmp_path):
    # whoever can write the storage replaces the pickles of an interrupted search (issue 12, row 3: before, the
    # payload ran in the driver on the rerun)
    logs, experiment = slow_search(tmp_path, num_trials=4)
    exp_dir = tmp_path / "runs" / "killed"
    driver = start_search(experiment)
    try:
        done_before = wait_until_partway(str(exp_dir), driver, finished=1)
        assert done_before, "the search did not get far enough to be killed"
    finally:
        kill_search(driver)
    left = checkpoints_left(exp_dir, logs)

    marker = tmp_path / "payload-ran"
    payload = subprocess.run([sys.executable, "-c", PAYLOAD.format(marker=str(marker))], capture_output=True).stdout
    planted = [*exp_dir.glob("searcher-state-*.pkl"), exp_dir / "tuner.pkl", exp_dir / "searcher-state-9999.pkl",
               exp_dir / "search_gen_state-9999.json", exp_dir / "callback-states-9999.pkl"]  # fmt: skip
    for path in planted:
        path.write_bytes(payload)
    # and a newer snapshot of Ray's controller, with a pickle inside, as Ray's own JSON encoder writes one
    newer = json.loads(sorted(exp_dir.glob("experiment_state-*.json"))[-1].read_text())
    newer["runner_data"]["_planted"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
    (exp_dir / "experiment_state-9999-99-99_99-99-99.json").write_text(json.dumps(newer))

    # on a machine without the key that sealed it: refused in one line, nothing touched
    elsewhere = env(TUNETRAIN_KEY_FILE=str(tmp_path / "other-machine" / "state.key"))
    refused = subprocess.run(cli("search", str(experiment)), env=elsewhere, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert "sealed with a key this machine does not have" in refused.stderr.splitlines()[-1]
    assert not marker.exists() and all(path.read_bytes() == payload for path in planted)

    rerun = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not marker.exists(), "the planted pickle ran"
    assert "was not the copy tunetrain sealed" in rerun.stderr
    aside = exp_dir / "ray-state-backup" / "set-aside"
    assert {path.name for path in planted} | {"experiment_state-9999-99-99_99-99-99.json"} <= {
        path.name for path in aside.iterdir()
    }
    results = read_results(exp_dir)
    assert len(results.trials) == 4 and {t.status for t in results.trials} == {"completed"}
    check_resumed(logs, results, done_before, left)  # from the sealed state: every interrupted trial resumed


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--address", "127.0.0.1:1"], "`search.address` is '127.0.0.1:1', but nothing answers at 127.0.0.1:1"),
        (["--address", "auto"], "`search.address` is 'auto', but no running Ray cluster was found"),
        (["--storage", "nosuchfs://bucket/x"], "`search.storage` is 'nosuchfs://bucket/x', but pyarrow cannot open"),
        (["--num-trials", "0"], "`search.num_trials` is 0, but must be >= 1"),
        (["--set", "search.sampler=grid", "--set", "space.hidden={type: int, low: 1, high: 9}", "--backend", "ray"],
         None),
    ],
)  # fmt: skip
def test_bad_search_input_is_one_line_and_exit_2(tmp_path, flags, message):
    experiment = write_experiment(tmp_path, f"{TESTS / 'tiny_task.py'}:task")
    if message is None:  # a grid over an int is fine: it is finite. A grid over a float is not:
        flags = ["--set", "search.sampler=grid", "--set", "space.hidden={type: float, low: 1, high: 9}"]
        message = "`search.sampler` is 'grid', which cannot search this space"
    result = subprocess.run(
        cli("search", str(experiment), *flags), env=env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "killed" / "results.parquet").exists()


def test_ctrl_c_stops_the_search_says_how_to_resume_and_resuming_finishes_it(tmp_path):
    logs, experiment = slow_search(tmp_path)
    exp_dir = tmp_path / "runs" / "killed"

    # Ctrl-C in a terminal: SIGINT to the whole foreground process group (the driver and the Ray it started)
    driver = subprocess.Popen(
        cli("search", str(experiment)), env=env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        done_before = wait_until_partway(str(exp_dir), driver, finished=1)
        assert done_before, "the search did not get far enough to be interrupted"
        # the running search's study, mirrored into its optuna.journal, read here with Optuna's own storage as
        # optuna-dashboard reads it (issue 13): the finished trial COMPLETE, one RUNNING with reported values
        live = _journal_trials(exp_dir)
        assert optuna.trial.TrialState.COMPLETE in {t.state for t in live}
        assert any(t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values for t in live)
        # the Ray it started listens on loopback only (Ray would otherwise advertise the machine's address)
        listening = _listening_addresses(driver.pid)
        assert listening and listening <= LOOPBACK, listening
        os.killpg(driver.pid, signal.SIGINT)
        _, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "tunetrain: search interrupted; run the same command again to resume it"
    assert "Traceback" not in stderr
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "running"

    rerun = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = read_results(exp_dir)
    assert len(results.trials) == 6 and {t.status for t in results.trials} == {"completed"}
    ended_at = {t.trial_id: t.ended_at for t in results.trials}
    assert all(ended_at[trial_id] == ended for trial_id, ended in done_before.items())  # not rerun
    check_resumed(logs, results, done_before)  # and the interrupted ones resumed from their checkpoints
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"
    # one study across the interruption: each trial once, COMPLETE, none left RUNNING
    finished = _journal_trials(exp_dir)
    assert len(finished) == 6 and {t.state for t in finished} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.params["hidden"] for t in finished) == sorted(t.params["hidden"] for t in results.trials)


def _journal_trials(exp_dir) -> list:
    journal = optuna.storages.journal.JournalFileBackend(str(exp_dir / "optuna.journal"))
    return optuna.load_study(study_name="killed", storage=optuna.storages.JournalStorage(journal)).get_trials()


def test_ray_address_from_the_environment_is_the_cluster_to_join(tmp_path):
    # Ray sets RAY_ADDRESS for a job submitted to a cluster (`ray job submit -- tunetrain search ...`)
    experiment = write_experiment(tmp_path, f"{TESTS / 'tiny_task.py'}:task")
    result = subprocess.run(
        cli("search", str(experiment)), env=env(RAY_ADDRESS="127.0.0.1:1"), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith(
        "tunetrain: error: RAY_ADDRESS is '127.0.0.1:1', but nothing answers at 127.0.0.1:1"
    )
    assert len(result.stderr.strip().splitlines()) == 1
