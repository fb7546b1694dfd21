from __future__ import annotations

import os
import sys
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


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tiny_task():
    import tiny_task

    return tiny_task.task()
