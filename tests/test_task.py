"""Tests for `tunetrain.task`: what a `Task` accepts, and `load_task` of every kind of path and every way it fails.

test_loop.py's `test_unloadable_tasks` covers a missing module, a missing attribute, a function returning a
non-task, a spec without `:` and a file path that loads; the rest is here. Task files are written to tmp_path.
"""

from __future__ import annotations

import sys
import textwrap

import pyarrow as pa
import pytest
import torch
from torch.utils.data import TensorDataset

from tunetrain.data import ArrowDataset
from tunetrain.errors import ConfigError, TaskError
from tunetrain.task import Task, load_task

TASK_FILE = """
import torch
from torch.utils.data import TensorDataset
from tunetrain import Task

CALLS = []

def model_init(params):
    return torch.nn.Linear(2, 2)

def task():
    CALLS.append(1)
    return Task(model_init=model_init, train_dataset=TensorDataset(torch.zeros(4, 2), torch.zeros(4).long()))

named = Task(model_init=model_init, train_dataset=TensorDataset(torch.zeros(2, 2)), name="mine")
NUMBER = 3
"""


@pytest.fixture
def task_file(tmp_path, monkeypatch):
    """Write `name`.py into tmp_path (importable as a module too) and return its path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)

    def write(name: str, text: str = TASK_FILE):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(text))
        return path

    yield write
    for name in set(sys.modules) - before:  # the task modules written here go; anything else imported stays
        if name.startswith(("tt_", "tunetrain_task_")):
            del sys.modules[name]


def _model_init(params):
    return torch.nn.Linear(2, 2)


def _data() -> TensorDataset:
    return TensorDataset(torch.zeros(4, 2), torch.zeros(4).long())


# --- Task ----------------------------------------------------------------------------------------------------------


def test_a_task_turns_tables_into_datasets():
    table = pa.table({"x": [1.0, 2.0], "label": [0, 1]})
    task = Task(model_init=_model_init, train_dataset=table, eval_dataset=table)
    assert isinstance(task.train_dataset, ArrowDataset) and isinstance(task.eval_dataset, ArrowDataset)
    assert task.test_dataset is None and task.name == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model_init": "resnet"}, r"`model_init` is 'resnet', but must be callable as model_init\(params\)"),
        ({"train_dataset": None}, r"`train_dataset` is None, but a task needs training data"),
        ({"eval_dataset": 5}, r"`eval_dataset` is a int, but must be a torch Dataset"),
        ({"collate_fn": "stack"}, r"`collate_fn` is 'stack', but must be callable or None"),
        ({"compute_loss": 1.0}, r"`compute_loss` is 1.0, but must be callable or None"),
        ({"compute_metrics": {"acc": 1}}, r"`compute_metrics` is \{'acc': 1\}, but must be callable or None"),
    ],
)
def test_a_task_checks_what_it_is_given(values, message):
    with pytest.raises(TaskError, match=message):
        Task(**{"model_init": _model_init, "train_dataset": _data(), **values})


def test_a_task_error_is_a_config_error():
    with pytest.raises(ConfigError):
        Task(model_init="not callable", train_dataset=_data())


def test_a_task_may_leave_model_init_out():  # a single run then trains a model given to the Trainer
    assert Task(train_dataset=_data()).model_init is None


# --- load_task: the spec -------------------------------------------------------------------------------------------


def test_a_task_object_is_returned_as_it_is():
    task = Task(model_init=_model_init, train_dataset=_data())
    assert load_task(task) is task


@pytest.mark.parametrize("spec", ["a:b:c", ":task", "module:", "", ":", 42, None])
def test_a_spec_that_is_not_module_colon_attr(spec):
    with pytest.raises(TaskError, match=r"must look like 'pkg\.module:attr' or 'path/to/file\.py:attr'"):
        load_task(spec)


def test_a_module_attr_spec_loads_the_task_and_names_it(task_file):
    task_file("tt_module_task")
    task = load_task("tt_module_task:task")
    assert isinstance(task, Task) and task.name == "tt_module_task:task"
    assert load_task("tt_module_task:named").name == "mine"  # a name the task gives itself stays


def test_a_file_spec_loads_the_file_once(task_file):
    path = task_file("tt_file_task")
    first = load_task(f"{path}:task")
    second = load_task(f"{path}:task")
    assert first is not second and first.name == f"{path}:task"  # a fresh task from every call
    assert first.model_init is second.model_init  # from one module: the file ran once


def test_a_relative_file_spec_is_resolved_against_the_current_directory(task_file, tmp_path, monkeypatch):
    path = task_file("tt_relative_task")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert load_task("../tt_relative_task.py:task").model_init is load_task(f"{path}:task").model_init


# --- load_task: what can go wrong ----------------------------------------------------------------------------------


def test_a_missing_file(tmp_path):
    with pytest.raises(TaskError, match=r"task '.*nowhere\.py:task': file '.*nowhere\.py' does not exist"):
        load_task(f"{tmp_path}/nowhere.py:task")


def test_a_module_that_imports_something_missing_names_what_is_missing(task_file):
    task_file("tt_needs_dep", "import tt_no_such_dependency\n")
    with pytest.raises(TaskError, match=r"task 'tt_needs_dep:task': no module named 'tt_no_such_dependency'"):
        load_task("tt_needs_dep:task")


@pytest.mark.parametrize("how", ["module", "file"])
def test_a_module_that_fails_to_import_says_how_in_one_line(task_file, how):
    path = task_file(f"tt_broken_{how}", "raise ValueError('bad config value\\nsecond line')\n")
    spec = f"tt_broken_{how}:task" if how == "module" else f"{path}:task"
    with pytest.raises(
        TaskError, match=r"importing '.*tt_broken_\w+(\.py)?' raised ValueError: bad config value$"
    ) as e:
        load_task(spec)
    assert isinstance(e.value.__cause__, ValueError)  # the traceback is kept for whoever wants it


def test_a_file_that_failed_to_import_is_imported_again_next_time(task_file):
    path = task_file("tt_fixed_later", "raise ValueError('not yet')\n")
    with pytest.raises(TaskError, match="not yet"):
        load_task(f"{path}:task")
    task_file("tt_fixed_later")  # the user fixes the file
    assert isinstance(load_task(f"{path}:task"), Task)


@pytest.mark.parametrize("how", ["module", "file"])
def test_a_script_that_calls_sys_exit_on_import(task_file, how):
    path = task_file(f"tt_script_{how}", "import sys\nsys.exit(3)\n")
    spec = f"tt_script_{how}:task" if how == "module" else f"{path}:task"
    with pytest.raises(TaskError, match=r"importing '.*tt_script_\w+(\.py)?' called sys\.exit\(3\)"):
        load_task(spec)


def test_an_attribute_that_is_neither_a_task_nor_callable(task_file):
    task_file("tt_number")
    with pytest.raises(TaskError, match=r"task 'tt_number:NUMBER' is a int, but must be a Task or a function"):
        load_task("tt_number:NUMBER")


def test_a_task_function_that_raises_says_so_in_one_line(task_file):
    task_file(
        "tt_raises",
        "def task():\n    raise RuntimeError('data dir missing\\nmore')\n\ndef quiet():\n    raise KeyError\n",
    )
    with pytest.raises(TaskError, match=r"^task 'tt_raises:task': calling task raised RuntimeError: data dir missing$"):
        load_task("tt_raises:task")
    with pytest.raises(TaskError, match=r"calling quiet raised KeyError: \(no message\)$"):
        load_task("tt_raises:quiet")


def test_a_config_error_from_the_task_function_is_passed_on_as_it_is(task_file):
    task_file(
        "tt_config", "from tunetrain.errors import ConfigError\n\ndef task():\n    raise ConfigError('`size` is 0')\n"
    )
    with pytest.raises(ConfigError, match=r"^`size` is 0$") as caught:
        load_task("tt_config:task")
    assert type(caught.value) is ConfigError
