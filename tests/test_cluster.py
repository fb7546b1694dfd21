"""A real two-host Ray cluster on this machine: two network namespaces joined by a veth pair, Ray's token auth.

The head (10.77.0.1) runs in one namespace and a worker (10.77.0.2) in the other; `tunetrain search --address`
runs next to the head with its storage on a directory both hosts see. Trials land on both hosts. Then the worker
host fails mid-search, killed (every process in its namespace) or cut off (its link down, its processes left
running), and the trial it held resumes on the head from its last checkpoint. Needs root (`ip netns add`);
skipped, saying why, without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, TESTS
from slow_search import EPOCH, STEPS, cli, runs_of, slow_search, write_experiment

from tunetrain.results import read_results

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

HEAD, WORKER = "10.77.0.1", "10.77.0.2"
PORT = 6379


def _run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=60, **kwargs)


def _skip_unless_namespaces_can_be_made() -> None:
    if os.geteuid() != 0:
        pytest.skip("building two hosts needs root (`ip netns add`)")
    if shutil.which("ip") is None:
        pytest.skip("building two hosts needs iproute2's `ip`")
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.skip(f"no `ray` command next to {sys.executable}")


def _make_hosts(head: str, worker: str) -> None:
    """Two network namespaces joined by a veth pair: the head at 10.77.0.1, the worker at 10.77.0.2."""
    made = _run("ip", "netns", "add", head, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    _run("ip", "netns", "add", worker)
    _run("ip", "link", "add", f"{head}v", "type", "veth", "peer", "name", f"{worker}v")
    for name, address in ((head, HEAD), (worker, WORKER)):
        _run("ip", "link", "set", f"{name}v", "netns", name)
        _run("ip", "-n", name, "addr", "add", f"{address}/24", "dev", f"{name}v")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", name, "link", "set", f"{name}v", "up")


def _kill_host(namespace: str) -> None:
    """SIGKILL every process in the namespace: the host is gone (its Ray daemons were re-parented away from us)."""
    pids = _run("ip", "netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def _in(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


_RAY_CLI = str(Path(sys.executable).parent / "ray")
_COMMON = ["--num-cpus=1", "--disable-usage-stats"]


@pytest.fixture(scope="module")
def cluster():
    """(head namespace, worker namespace, env with the cluster's token): the two hosts and the head's Ray."""
    _skip_unless_namespaces_can_be_made()
    head, worker = f"tth{os.getpid() % 100000}", f"ttw{os.getpid() % 100000}"  # interface names: 15 bytes at most
    temp_dir = tempfile.mkdtemp(prefix="ttray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        # notice a dead or cut-off host in a few seconds, not the default ~15 to ~50
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    try:
        _make_hosts(head, worker)
        _run(
            *_in(head, _RAY_CLI, "start", "--head", f"--node-ip-address={HEAD}", f"--port={PORT}",
                 "--include-dashboard=false", f"--temp-dir={temp_dir}", *_COMMON),
            env=env,
        )  # fmt: skip
        yield head, worker, env
    finally:
        for name in (worker, head):
            _kill_host(name)
            _run("ip", "netns", "del", name, check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def worker_host(cluster):
    """The worker host's Ray joined to the head, for one test; afterwards its processes are gone, its link up."""
    _, worker, env = cluster
    try:
        _run(*_in(worker, _RAY_CLI, "start", f"--address={HEAD}:{PORT}", f"--node-ip-address={WORKER}", *_COMMON),
             env=env)  # fmt: skip
        yield cluster
    finally:
        _kill_host(worker)
        _run("ip", "-n", worker, "link", "set", f"{worker}v", "up", check=False)


def test_the_cluster_refuses_a_client_without_its_token(cluster):
    head, _, env = cluster
    anonymous = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = _run(*_in(head, _RAY_CLI, "status", f"--address={HEAD}:{PORT}"), env=anonymous, check=False)
    assert refused.returncode != 0
    assert "InvalidAuthToken" in refused.stdout + refused.stderr
    allowed = _run(*_in(head, _RAY_CLI, "status", f"--address={HEAD}:{PORT}"), env=env, check=False)
    assert allowed.returncode == 0, allowed.stderr[-2000:]


@pytest.mark.parametrize("fault", ["killed", "cut off"])
def test_trials_run_on_both_hosts_and_resume_on_the_head_when_the_worker_host_fails(worker_host, tmp_path, fault):
    head, worker, env = worker_host
    hidden = [4, 6, 8, 10]
    logs, experiment = slow_search(tmp_path, num_trials=len(hidden), resources_per_trial={"cpu": 1})
    exp_dir = tmp_path / "runs" / "killed"

    driver = subprocess.Popen(
        _in(head, *cli("search", str(experiment), "--address", f"{HEAD}:{PORT}")),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # wait until the worker host holds a trial that has saved a checkpoint (an evaluation) but not finished
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.3)
            for log in logs.glob("trial-*.log"):
                runs = runs_of(logs, log.stem[len("trial-") :])
                if len(runs) == 1 and runs[0][0] == WORKER and EPOCH < runs[0][1] < STEPS - 10:
                    victim = log.stem[len("trial-") :]
        if victim is None and driver.poll() is not None:
            ended = f"the search ended before the fault (exit {driver.returncode})"
            pytest.fail(f"{ended}: {driver.stderr.read()[-3000:]}")
        assert victim is not None, "no trial on the worker host got past its first checkpoint"
        if fault == "killed":  # every process of the host
            _kill_host(worker)
        else:  # its link cut: its processes live on, cut off, until Ray on that host gives up on the head
            _run("ip", "-n", worker, "link", "set", f"{worker}v", "down")
        stdout, stderr = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr[-3000:]

    results = read_results(exp_dir)
    assert len(results.trials) == len(hidden)
    assert {t.status for t in results.trials} == {"completed"}, [(t.status, t.error) for t in results.trials]
    assert all(t.evaluations == STEPS // EPOCH for t in results.trials)
    assert {node for t in results.trials for node, _ in runs_of(logs, t.trial_id)} == {HEAD, WORKER}
    # the victim trained part of its run on the worker host, then the rest on the head from the last checkpoint
    # the worker host wrote: a multiple of the 15 steps an epoch, not from step 0
    (first_node, first_steps), (second_node, second_steps) = runs_of(logs, victim)
    assert (first_node, second_node) == (WORKER, HEAD)
    assert 0 < second_steps < STEPS and (STEPS - second_steps) % EPOCH == 0
    assert STEPS - second_steps <= first_steps
    assert json.loads(stdout.strip().splitlines()[-1])["best"]["trial_id"] in {t.trial_id for t in results.trials}


def test_storage_that_a_node_cannot_see_is_refused_in_one_line_before_anything_starts(cluster, tmp_path):
    # the worker host sees its own empty directory where the head keeps the experiment (a mount of its own, as a
    # local disk on each machine would be)
    _, worker, env = cluster
    hidden = tmp_path / "on-the-head-only"
    hidden.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("hiding a directory from one host needs util-linux's `unshare`")
    try:
        _run(*_in(worker, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                  'mount -t tmpfs none "$0" && exec "$@"', str(hidden),
                  _RAY_CLI, "start", f"--address={HEAD}:{PORT}", f"--node-ip-address={WORKER}", *_COMMON),
             env=env)  # fmt: skip
        experiment = write_experiment(tmp_path, f"{TESTS / 'tiny_task.py'}:task", storage=str(hidden / "runs"))
        refused = subprocess.run(
            _in(cluster[0], *cli("search", str(experiment), "--address", f"{HEAD}:{PORT}")),
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        _kill_host(worker)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"tunetrain: error: `search.storage` {str(hidden / 'runs' / 'killed')!r} is not reachable from Ray node(s) "
        f"{WORKER}: use a directory shared by every node (e.g. NFS) or a URI such as s3://bucket/path"
    )
    exp_dir = hidden / "runs" / "killed"
    assert not (exp_dir / "search.json").exists() and not list(exp_dir.glob("trial*"))  # nothing started
