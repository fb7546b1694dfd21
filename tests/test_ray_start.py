"""Ray's start in the background (tunetrain.tuning.ray.cluster): taken up by `connect`, its errors raised there,
and the thread that started it released once the search is done, whichever way it ends. Ray itself is faked here:
the searches of the e2e tests start the real one this way."""

from __future__ import annotations

import threading

import pytest

from tunetrain.errors import ConfigError
from tunetrain.tuning.config import SearchConfig
from tunetrain.tuning.ray import cluster


@pytest.fixture
def fake_ray(monkeypatch):
    """cluster.start / the shutdown / the checks made on the cluster, recorded instead of run."""
    calls: list[str] = []
    outcome: dict[str, object] = {"start": True}
    go = threading.Event()

    def start(config, *, named="`search.address`"):
        go.wait(5)
        calls.append("start")
        if isinstance(outcome["start"], BaseException):
            raise outcome["start"]
        return outcome["start"]

    monkeypatch.setattr(cluster, "start", start)
    monkeypatch.setattr(cluster, "_shut_down", lambda: calls.append("shutdown"))
    monkeypatch.setattr(cluster, "_check_resources", lambda config: calls.append("checked"))
    monkeypatch.setattr(cluster, "_pending", None)
    yield calls, outcome, go
    assert cluster._pending is None, "a start thread was left waiting"


def _start_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tunetrain-ray-start"]


def test_connect_takes_up_the_start_begun_in_the_background_and_stop_ends_its_thread(fake_ray):
    calls, _, go = fake_ray
    cluster.start_in_background(SearchConfig())
    assert calls == []  # the caller goes on while Ray starts
    go.set()
    started = cluster.connect(SearchConfig(), exp_dir=None)
    assert started is True and calls == ["start", "checked"]
    thread = cluster._pending
    assert thread is not None and thread.is_alive()  # it holds Ray's processes until the search is done
    cluster.stop(started)
    thread.join(5)
    assert calls[-1] == "shutdown" and not thread.is_alive()


def test_an_error_of_the_background_start_is_raised_by_connect(fake_ray):
    calls, outcome, go = fake_ray
    outcome["start"] = ConfigError("`search.address` is 'nowhere:1', but no Ray cluster answers there")
    cluster.start_in_background(SearchConfig())
    go.set()
    with pytest.raises(ConfigError, match="no Ray cluster answers there"):
        cluster.connect(SearchConfig(), exp_dir=None)
    assert "checked" not in calls and "shutdown" not in calls


def test_a_search_refused_before_connect_shuts_down_the_ray_its_background_start_began(fake_ray):
    calls, _, go = fake_ray
    cluster.start_in_background(SearchConfig())
    go.set()
    cluster.abandon()
    assert calls == ["start", "shutdown"]
    cluster.abandon()  # nothing left to abandon: no error
    assert calls == ["start", "shutdown"]


def test_a_ray_already_up_in_the_process_is_left_up(fake_ray):
    calls, outcome, go = fake_ray
    outcome["start"] = False  # what cluster.start returns when ray.is_initialized()
    go.set()
    cluster.start_in_background(SearchConfig())
    started = cluster.connect(SearchConfig(), exp_dir=None)
    cluster.stop(started)
    assert "shutdown" not in calls


def test_a_failed_check_on_the_cluster_shuts_down_the_ray_this_search_started(fake_ray, monkeypatch):
    calls, _, go = fake_ray
    go.set()

    def refuse(config):
        raise ConfigError("`search.resources_per_trial` asks for 64 CPU + 0 GPU per trial, but ...")

    monkeypatch.setattr(cluster, "_check_resources", refuse)
    cluster.start_in_background(SearchConfig())
    with pytest.raises(ConfigError, match="resources_per_trial"):
        cluster.connect(SearchConfig(), exp_dir=None)
    assert calls == ["start", "shutdown"]
    assert not [t for t in _start_threads() if t.is_alive() and not t.released.is_set()]


def test_ctrl_c_while_connect_waits_for_the_start_shuts_down_the_ray_it_goes_on_to_start(fake_ray, monkeypatch):
    calls, _, go = fake_ray
    cluster.start_in_background(SearchConfig())
    pending = cluster._pending
    real_wait = pending.wait
    interrupted = []

    def wait_interrupted():
        if not interrupted:
            interrupted.append(True)
            go.set()  # Ray goes on starting in its thread
            raise KeyboardInterrupt
        return real_wait()

    monkeypatch.setattr(pending, "wait", wait_interrupted)
    with pytest.raises(KeyboardInterrupt):
        cluster.connect(SearchConfig(), exp_dir=None)
    assert calls == ["start", "shutdown"]


@pytest.mark.e2e
def test_the_python_sigterm_handler_answers_sigterm_again_once_ray_started_in_the_background(monkeypatch):
    """Ray's core worker installs a C handler of its own on SIGTERM as it starts (a stack dump, then abort: exit -6,
    row 12 of the reliability table); started in a thread, the caller's Python handler is put back by `connect`.
    The handler in force is read from the kernel (sigaction), not from Python's record of it."""
    import ctypes
    import signal

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    libc = ctypes.CDLL(None, use_errno=True)

    class Sigaction(ctypes.Structure):  # the kernel's struct sigaction on Linux (glibc): the handler comes first
        _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16), ("flags", ctypes.c_int),
                    ("restorer", ctypes.c_void_p)]  # fmt: skip

    def in_force() -> int | None:
        old = Sigaction()
        assert libc.sigaction(signal.SIGTERM, None, ctypes.byref(old)) == 0
        return old.handler

    previous = signal.signal(signal.SIGTERM, lambda *args: None)
    try:
        python_handler = in_force()
        monkeypatch.setattr(cluster, "_pending", None)
        cluster.start_in_background(SearchConfig())
        cluster._pending.done.wait(120)
        started = cluster.connect(SearchConfig(), exp_dir=None)
        try:
            assert started is True
            assert in_force() == python_handler
        finally:
            cluster.stop(started)
    finally:
        signal.signal(signal.SIGTERM, previous)
