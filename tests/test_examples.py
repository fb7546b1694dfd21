"""Every script under examples/ runs to the end (in-process, its output dir under tmp_path)."""

from __future__ import annotations

import re
import runpy
import sys

import pytest
from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NEEDS_A_CLUSTER = {"cluster_sweep"}  # runnable only against a Ray cluster (multi-node tests: issue 6)
EXTRA_ARGS = {"search_from_python": ["--backend", "optuna"]}  # the Ray backend has its own tests


def test_the_seed_usages_are_there():
    names = {p.stem for p in EXAMPLES}
    assert {"basic", "with_evaluation", "resume", "amp_accumulation", "optuna_study"} <= names


@pytest.mark.e2e
@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem not in NEEDS_A_CLUSTER], ids=lambda p: p.stem)
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    if path.stem == "coming_from_transformers":
        pytest.importorskip("transformers", reason="the example needs transformers (CI installs it)")
        pytest.importorskip("datasets", reason="the example needs datasets (CI installs it)")
    monkeypatch.setattr(sys, "argv", [str(path), str(tmp_path / "out"), *EXTRA_ARGS.get(path.stem, [])])
    runpy.run_path(str(path), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.strip()
    if path.stem == "resume":
        assert printed.count("to the same weights: True") == 2
    if path.stem == "optuna_study":
        assert "best accuracy" in printed
    if path.stem == "coming_from_transformers":
        assert "'eval_accuracy': 1.0" in printed and "pipeline on the export: [{'label'" in printed
    if path.stem == "pbt":
        found = re.search(r"best (\S+) at step (\d+) \(the search: (\S+) at step (\d+)\)", printed)
        assert found and found.group(1, 2) == found.group(3, 4), printed
    if path.stem == "search_from_python":
        assert "best trial" in printed and "8 done" in printed
