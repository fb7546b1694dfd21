from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# property tests draw the same examples on every run (CI must not pass or fail by chance);
# HYPOTHESIS_PROFILE=explore draws new ones
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# generated MNIST-1D data is cached under /tmp, not the user's ~/.cache (search workers inherit this)
os.environ.setdefault("TUNETRAIN_CACHE_DIR", "/tmp/tunetrain-test-cache")
# the key that seals Ray's saved state (tunetrain.storage.signing) is the tests' own, not the user's ~/.config one
os.environ.setdefault("TUNETRAIN_KEY_FILE", "/tmp/tunetrain-test-key/state.key")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Under CI (the env var CI set), a test marked `reliability` that skips fails, with the skip's reason: the
    README's reliability table says each of its rows runs, so CI must run them (root, `ip`, network namespaces,
    a tmpfs, moto's server), not pass over them."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and _in_ci() and item.get_closest_marker("reliability"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, but CI must run every row of the README's reliability table: {reason}"


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_task():
    import tiny_task

    return tiny_task.task()
