"""Faults of the second reliability round, through the real CLI: two drivers on one experiment, SIGTERM, a time
budget that runs out."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from slow_search import STEPS, cli, env, slow_search

from tunetrain.results import read_history, read_results

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]


def _wait_for_evaluation(exp_dir, driver, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.3)
        try:
            if read_history(exp_dir):
                return
        except Exception:  # not written yet
            continue
    stderr = driver.stderr.read() if driver.poll() is not None else ""
    raise AssertionError(f"the first driver never evaluated (exit {driver.poll()}): {str(stderr)[-3000:]}")


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_a_second_driver_on_the_same_experiment_is_refused_and_the_first_finishes_alone(tmp_path, backend):
    # row 1: before the lock both ran (Ray: results lost, two drivers training one trial dir; Optuna: the second
    # "resumed" the first's live trial, and the first died). Now the second exits 2 in one line naming the holder,
    # the first finishes as if alone, and report and export work while it runs
    _, experiment = slow_search(tmp_path, num_trials=2, backend=backend)
    exp_dir = tmp_path / "runs" / "killed"
    first = subprocess.Popen(cli("search", str(experiment)), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_evaluation(exp_dir, first)
        second = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-2000:]
        assert f"is being searched by another driver (pid {first.pid} on " in lines[0]
        # readers need no lock: the report of a running search
        report = subprocess.run(cli("report", str(exp_dir), "--out", str(tmp_path / "report")), env=env(),
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert report.returncode == 0, report.stderr[-2000:]
        _, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    result = read_results(exp_dir)
    assert [t.status for t in result.trials] == ["completed", "completed"]
    assert all(t.evaluations == STEPS // 15 for t in result.trials)
    assert len(list((exp_dir / "trials").iterdir())) == 2  # no trial dir of a second driver
    exported = subprocess.run(cli("export", str(exp_dir), "--out", str(tmp_path / "best")), env=env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-2000:]


def test_a_time_budget_ends_a_ray_search_as_finished(tmp_path):
    # row 4: `time_budget_s` with more trials than fit in it exited 130 ("search interrupted"), search.json stayed
    # running, trials stayed running, and every rerun did the same
    _, experiment = slow_search(tmp_path, num_trials=20, backend="ray", time_budget_s=12)
    exp_dir = tmp_path / "runs" / "killed"
    run = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "finished"
    result = read_results(exp_dir)
    statuses = [t.status for t in result.trials]
    assert "running" not in statuses and "timed_out" in statuses, statuses
    assert len(result.trials) < 20  # the budget, not the trial count, ended it
    again = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]  # a finished search is shown
    assert [t.status for t in read_results(exp_dir).trials] == statuses


@pytest.mark.parametrize("backend", ["ray", "optuna"])
def test_sigterm_stops_a_search_as_ctrl_c_does_and_it_resumes(tmp_path, backend):
    # row 12: SIGTERM (what SLURM and Kubernetes send) to `tunetrain search` on Ray ended it with exit 1, 15 or -6 at
    # random and Ray's stack dump, no line from tunetrain
    _, experiment = slow_search(tmp_path, num_trials=2, backend=backend)  # 2: one round of the Ray search
    exp_dir = tmp_path / "runs" / "killed"
    driver = subprocess.Popen(cli("search", str(experiment)), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        _wait_for_evaluation(exp_dir, driver)
        driver.send_signal(signal.SIGTERM)  # to the driver alone, as `kill PID` does
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 143, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("tunetrain: search")]
    assert ours[-1] == "tunetrain: search terminated (SIGTERM); run the same command again to resume it"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert json.loads((exp_dir / "search.json").read_text())["status"] == "running"
    rerun = subprocess.run(cli("search", str(experiment)), env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = read_results(exp_dir)
    assert len(result.trials) == 2 and {t.status for t in result.trials} == {"completed"}
    assert all(t.evaluations == STEPS // 15 for t in result.trials)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
def test_sigterm_stops_tunetrain_train_and_resume_continues(tmp_path, sigint):
    # ignored: a command a non-interactive shell starts in the background (`tunetrain train x &` in a script)
    # inherits SIGINT ignored; SIGTERM, passed on as SIGINT, did nothing there and the run went on to its end
    _, experiment = slow_search(tmp_path, num_trials=1)
    out = tmp_path / "fit"
    train = cli("train", str(experiment), "--params", '{"hidden": 4}', "--output-dir", str(out))
    train += ["--set", "train.save_strategy=epoch"]
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint == "ignored" else None
    run = subprocess.Popen(train, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=ignore)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("checkpoint-*")) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        "tunetrain: terminated (SIGTERM); run the same command with --resume to continue"
    )
    resumed = subprocess.run([*train, "--resume"], env=env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["metrics"]["epoch"] == STEPS // 15


LOOPBACK_SCRIPT = """
import json, sys, threading, time
import ray  # imported before tunetrain, as a user's script (or a task file) may: Ray reads its settings now
import psutil
import tunetrain

def listening():
    time.sleep({wait_s})
    me = psutil.Process()
    found = set()
    for process in [me, *me.children(recursive=True)]:
        try:
            found |= {{c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}}
        except psutil.Error:
            continue
    print("LISTENING " + json.dumps(sorted(found)), flush=True)

threading.Thread(target=listening, daemon=True).start()
tunetrain.search({experiment!r})
"""


def test_a_local_ray_listens_on_loopback_only_whatever_was_imported_first(tmp_path):
    # row 15: the harness set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 itself; without it, a Ray imported before tunetrain
    # had its GCS and raylet listening on every interface ('::')
    _, experiment = slow_search(tmp_path, num_trials=2, backend="ray")
    script = tmp_path / "user_script.py"
    script.write_text(LOOPBACK_SCRIPT.format(wait_s=8, experiment=str(experiment)))
    plain = {k: v for k, v in env().items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    run = subprocess.run([sys.executable, str(script)], env=plain, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("LISTENING ")]
    listening = set(json.loads(line[len("LISTENING ") :]))
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, listening
