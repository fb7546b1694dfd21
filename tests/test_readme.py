"""The README's two set-up commands: the test one is what CI runs, the other runs the quickstart."""

from __future__ import annotations

import re

from conftest import ROOT


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci
    assert tests.endswith("python -m pytest -q")


def test_the_main_job_installs_and_runs_the_quickstart():
    main_job, _ = _commands()
    assert "pip install torch==2.13.0" in main_job
    assert main_job.endswith("search_spaces/quickstart.yaml")
    assert (ROOT / "search_spaces" / "quickstart.yaml").is_file()
