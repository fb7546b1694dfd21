"""An experiment in S3-style storage through pyarrow.fs: a local S3 server on loopback (moto's server mode) holds it.

A search killed with SIGKILL resumes from the bucket alone (the trials copy their checkpoints back down); its best
trial is exported, reported on and trained again, all read from the bucket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from slow_search import check_resumed, cli, env, slow_search, wait_until_partway

from tunetrain.results import read_results
from tunetrain.storage import resolve_storage

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

# moto takes any credentials; no AWS SDK lookup may leave the machine (instance metadata is off)
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """host:port of a moto S3 server on 127.0.0.1, for this module."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto's server mode: pip install 'moto[server]'")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _storage(endpoint: str, bucket: str, name: str = "") -> str:
    where = f"{bucket}/runs/{name}".rstrip("/")
    return f"s3://{where}?endpoint_override={endpoint}&scheme=http&allow_bucket_creation=true"


def test_a_search_in_s3_resumes_from_the_bucket_and_its_best_trial_exports(s3_endpoint, tmp_path, monkeypatch):
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    storage = _storage(s3_endpoint, "resumed")
    logs, experiment = slow_search(tmp_path, storage=storage)
    filesystem, runs = resolve_storage(storage)
    exp_path = f"{runs}/killed"

    driver = subprocess.Popen(
        cli("search", str(experiment)), env=env(**AWS_ENV), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        done_before = wait_until_partway(exp_path, driver, finished=2, filesystem=filesystem)
        assert done_before, "the search did not get far enough to be killed"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    assert not (tmp_path / "runs").exists()  # nothing of the experiment on the local disk

    rerun = subprocess.run(cli("search", str(experiment)), env=env(**AWS_ENV), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming experiment 'killed'" in rerun.stderr
    results = read_results(exp_path, filesystem=filesystem)
    assert len(results.trials) == 6 and {t.status for t in results.trials} == {"completed"}
    check_resumed(logs, results, done_before)
    best = results.best
    assert best.checkpoint.startswith("s3://resumed/runs/killed/trials/")

    # the best trial, taken out of the bucket by its experiment dir's URI, and trained again from it
    exported = subprocess.run(
        cli("export", _storage(s3_endpoint, "resumed", "killed"), "--out", str(tmp_path / "best")),
        env=env(**AWS_ENV), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads((tmp_path / "best" / "params.json").read_text()) == best.params
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["trial_id"] == best.trial_id
    with filesystem.open_input_stream(f"{best.checkpoint.split('://', 1)[1]}/model.safetensors") as weights:
        assert (tmp_path / "best" / "model.safetensors").read_bytes() == weights.read()

    reported = subprocess.run(
        cli("report", _storage(s3_endpoint, "resumed", "killed"), "--out", str(tmp_path / "report")),
        env=env(**AWS_ENV), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert best.trial_id in reported.stdout and (tmp_path / "report" / "report.html").is_file()

    # and the final fit of the best trial's params, from the bucket, into a local dir
    final = subprocess.run(
        cli("train", _storage(s3_endpoint, "resumed", "killed"), "--output-dir", str(tmp_path / "final")),
        env=env(**AWS_ENV), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"training the best trial {best.trial_id}" in final.stderr
    assert json.loads(final.stdout.strip().splitlines()[-1])["params"] == best.params

    from tunetrain.export import load_model

    model = load_model(tmp_path / "best")
    assert sum(p.numel() for p in model.parameters()) > 0
