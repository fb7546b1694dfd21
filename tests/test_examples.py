"""Every script under examples/ runs to the end (in-process, its output dir under tmp_path)."""

from __future__ import annotations

import runpy
import sys

import pytest
from conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_the_seed_usages_are_there():
    names = {p.stem for p in EXAMPLES}
    assert {"basic", "with_evaluation", "resume", "amp_accumulation", "optuna_study"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(path), str(tmp_path / "out")])
    runpy.run_path(str(path), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.strip()
    if path.stem == "resume":
        assert printed.count("to the same weights: True") == 2
    if path.stem == "optuna_study":
        assert "best accuracy" in printed
