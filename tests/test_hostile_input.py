"""Hostile experiment files through the real CLI: each gives one line on stderr naming the key or value, exit code 2,
no traceback and no hang. The files that could blow up memory or recursion run in a subprocess with a time limit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from tunetrain.cli import main
from tunetrain.errors import ConfigError
from tunetrain.experiment import experiment_from_dict

TASK = "tunetrain.tasks.mnist1d:mlp"
HEAD = f"name: x\ntask: {TASK}\n"
SPACE = "space:\n  learning_rate: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
# a file that trains and searches (2 steps, one in-process trial) but for the space param after it: refused
# before anything starts, not by the trial
RUNS = HEAD + "train: {max_steps: 2, eval_strategy: steps, eval_steps: 1, report_to: none}\n"
RUNS += "search: {backend: optuna, num_trials: 1}\n" + SPACE

# nine levels of nine aliases: 9**9 (387 million) strings, held by reference
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi", strict=True)
)

RAISES_ON_IMPORT = "raise RuntimeError('the GPU driver is missing')\n"
EXITS_ON_IMPORT = "import sys\nsys.exit(3)\n"
RECURSES = "def task():\n    return task()\n"

# (id, file text, the part of the error line `tunetrain train` must show)
CASES = [
    ("empty file", "", "an experiment file must be a mapping"),
    ("a list", "- a\n- b\n", "an experiment file must be a mapping"),
    ("a scalar", "42\n", "an experiment file must be a mapping"),
    ("tab indentation", "name: x\n\ttask: y\n", "is not valid YAML (line 2, column 1)"),
    ("duplicate key", "name: x\nname: y\ntask: t:t\n", "key 'name' appears twice (first on line 1)"),
    ("duplicate nested key", HEAD + "train:\n  seed: 1\n  seed: 2\n", "key 'seed' appears twice (first on line 4)"),
    (
        "python object tag",
        "name: !!python/object/apply:os.system ['echo pwned']\n",
        "could not determine a constructor",
    ),
    ("unclosed flow", HEAD + "train: {seed: 1\n", "is not valid YAML"),
    ("typo in a section", HEAD + "trian: {}\n", "`trian` is not an experiment key (did you mean `train`?)"),
    ("no name", f"task: {TASK}\n", "`name`"),
    ("name is a list", f"name: [a, b]\ntask: {TASK}\n", "`name` is ['a', 'b'] (list), but must be"),
    ("name escapes storage", f"name: ../../etc\ntask: {TASK}\n", "`name` is '../../etc', but must be"),
    ("no task", "name: x\n", "`task`"),
    ("task without a colon", "name: x\ntask: nocolon\n", "`task` is 'nocolon', but must be"),
    ("task module missing", "name: x\ntask: no_such_module_xyz:task\n", "no module named 'no_such_module_xyz'"),
    ("train is a list", HEAD + "train: [1, 2]\n", "`train` is a list, but must be a mapping"),
    ("unknown train field", HEAD + "train: {learning_rat: 0.1}\n", "did you mean `learning_rate`?"),
    ("homoglyph key", HEAD + "train: {l\u0435arning_rate: 0.1}\n", "is not a TrainingArguments field"),
    ("wrong type", HEAD + "train: {num_train_epochs: many}\n", "`train.num_train_epochs` is 'many' (str)"),
    ("NaN learning rate", HEAD + "train: {learning_rate: .nan}\n", "`train.learning_rate` is nan"),
    ("inf learning rate", HEAD + "train: {learning_rate: .inf}\n", "`train.learning_rate` is inf"),
    ("negative batch", HEAD + "train: {per_device_train_batch_size: -4}\n", "must be >= 1"),
    ("bool as a number", HEAD + "train: {num_train_epochs: true}\n", "`train.num_train_epochs` is True (bool)"),
    ("a 5000-digit integer", HEAD + f"train: {{seed: {'9' * 5000}}}\n", "holds a value that cannot be read"),
    ("unknown strategy", HEAD + "train: {eval_strategy: sometimes}\n", "`train.eval_strategy` is 'sometimes'"),
    ("space NaN bound", HEAD + "space: {lr: {type: float, low: .nan, high: 1}}\n", "`space.lr.low` is nan"),
    (
        "space low > high",
        HEAD + "space: {lr: {type: float, low: 1, high: 0}}\n",
        "`space.lr.low` is 1.0, but must be <",
    ),
    ("space unknown type", HEAD + "space: {lr: {type: flaot, low: 0, high: 1}}\n", "did you mean `float`?"),
    ("space no choices", HEAD + "space: {act: {type: categorical, choices: []}}\n", "`space.act.choices`"),
    (
        "space huge float bound",
        HEAD + f"space: {{lr: {{type: float, low: 0, high: {'9' * 400}}}}}\n",
        "`space.lr.high`",
    ),
    ("space is a string", HEAD + "space: lots\n", "`space` is a str, but must be a mapping"),
    (
        "space searches output_dir",
        RUNS + "  output_dir: {type: categorical, choices: [a, b]}\n",
        "`space.output_dir` is not a hyperparameter: a search gives each trial its own dir",
    ),
    (
        "space searches save_total_limit",
        RUNS + "  save_total_limit: {type: int, low: 1, high: 3}\n",
        "`space.save_total_limit` is not a hyperparameter",
    ),
    (
        "space epochs as words",
        RUNS + "  num_train_epochs: {type: categorical, choices: [two, three]}\n",
        "`space.num_train_epochs.choices` is 'two' (str), but must be a float",
    ),
    (
        "space float batch size",
        RUNS + "  per_device_train_batch_size: {type: float, low: 8, high: 64}\n",
        "`space.per_device_train_batch_size` is a float param, but TrainingArguments.per_device_train_batch_size",
    ),
    (
        "space unknown optimizer",
        RUNS + "  optim: {type: categorical, choices: [adamw, adagrad]}\n",
        "`space.optim.choices` is 'adagrad', but must be one of adamw | adamw_torch | adamw_torch_fused | adam | sgd",
    ),
    ("params not a mapping", HEAD + "params: [1]\n", "`params` is a list, but must be a mapping"),
    ("params unknown to the model", HEAD + "params: {hiden_size: 8}\n", "`hiden_size` is not a param"),
    ("search unknown key", HEAD + SPACE + "search: {num_trails: 3}\n", "did you mean `num_trials`?"),
    ("search zero trials", HEAD + SPACE + "search: {num_trials: 0}\n", "`search.num_trials` is 0, but must be >= 1"),
    ("search bad scheduler", HEAD + SPACE + "search: {scheduler: {type: hyperband}}\n", "`search.scheduler.type`"),
    ("search bad backend", HEAD + SPACE + "search: {backend: slurm}\n", "`search.backend` is 'slurm'"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("command", ["train", "search"])
def test_a_malformed_experiment_file_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, command, text, expected):
    monkeypatch.chdir(tmp_path)  # a `tunetrain train` that started would write to runs/x here
    path = tmp_path / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    code = main([command, str(path)] + (["--storage", str(tmp_path / "runs")] if command == "search" else []))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("tunetrain: error: "), err
    assert "Traceback" not in err
    if command == "train" or text.startswith(RUNS) or expected.startswith(("`search.", "did you mean `num_trials`")):
        assert expected in lines[0], lines[0]  # a search may name another problem first (e.g. an empty space)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_enough_hostile_inputs():
    assert len(CASES) >= 30


def test_a_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "experiment.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00 garbage \x89PNG\n")
    assert main(["train", str(path)]) == 2
    assert "is not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (RAISES_ON_IMPORT, "raised RuntimeError: the GPU driver is missing"),
        (EXITS_ON_IMPORT, "called sys.exit(3)"),
        (RECURSES, "calling task raised RecursionError: maximum recursion depth exceeded"),
    ],
    ids=["raises on import", "exits on import", "recurses"],
)
def test_a_task_file_that_misbehaves(tmp_path, capsys, source, expected):
    (tmp_path / "bad_task.py").write_text(source)
    path = tmp_path / "experiment.yaml"
    path.write_text(f"name: x\ntask: {tmp_path / 'bad_task.py'}:task\n")
    assert main(["train", str(path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tunetrain: error: task ") and expected in line


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + ALIAS_BOMB, "`a` is not an experiment key"),
        (ALIAS_BOMB + HEAD + "train:\n  learning_rate: *i\n", "`train.learning_rate` is [[[...]"),
        (ALIAS_BOMB + HEAD + "space:\n  lr: *i\n", "`space.lr`"),
        (HEAD + "space:\n  lr: " + "[" * 5000 + "]" * 5000 + "\n", "is nested too deeply to read"),
        (HEAD + "train: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "is nested too deeply to read"),
    ],
    ids=["alias bomb keys", "alias bomb value", "alias bomb space", "deep list", "deep mapping"],
)
@pytest.mark.parametrize("command", ["train", "search"])
def test_bombs_and_deep_nesting_end_in_seconds(tmp_path, command, text, expected):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TUNETRAIN_CACHE_DIR": "/tmp"}
    done = subprocess.run(
        [sys.executable, "-m", "tunetrain.cli", command, str(path)],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("tunetrain: error: "), done.stderr[-2000:]
    assert len(lines[0]) < 2000  # the value is shown cut short, not expanded
    if command == "train" or "nested" in expected:
        assert expected in lines[0], lines[0]


_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["float", "int", "categorical", "log", "low", "high", "step", "choices", "when", "1e-3", ".nan"])
)  # fmt: skip
_junk = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | _scalars, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(section=st.sampled_from(["space", "train", "params", "search"]), value=_junk)
def test_property_any_junk_section_is_read_or_refused_in_one_line(section, value):
    """Junk in any section of an experiment is read or refused with one ConfigError line naming where."""
    raw = {"name": "x", "task": TASK, section: value}
    try:
        experiment = experiment_from_dict(raw)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 5000
        assert f"`{section}" in message or "must be" in message
        return
    assert experiment.name == "x"
