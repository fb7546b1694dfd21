"""`Task`: what a user supplies (model factory, datasets, loss, metrics), and loading one from a path.

A task is plain PyTorch: it knows nothing of the training loop, of searches or of the command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunetrain.errors import ConfigError, TaskError

if TYPE_CHECKING:
    import numpy as np
    import torch

    ModelInit = Callable[[dict[str, Any]], torch.nn.Module]
    ComputeLoss = Callable[[Any, "torch.Tensor"], "torch.Tensor"]
    ComputeMetrics = Callable[[np.ndarray, np.ndarray], Mapping[str, float]]


@dataclass(kw_only=True)
class Task:
    """A model factory and the data it trains on.

    - `model_init(params) -> nn.Module`: builds a fresh model from the params that are not TrainingArguments
      fields (sizes, dropout, ...). Called after the run's seed is set, so its initial weights are reproducible.
      A search needs it (each trial a fresh model); a single run can instead train a model given to the Trainer
      (`Trainer(task, args, model=model)`, as in Transformers).
    - `train_dataset`, `eval_dataset`, `test_dataset`: a torch `Dataset`, a `pyarrow.Table`, or the path of a
      Parquet file (both through `tunetrain.data.ArrowDataset`). A search selects on eval; test is scored only
      at the end of a final fit.
    - `collate_fn`: passed to the DataLoader (default: torch's default_collate).
    - `compute_loss(outputs, labels) -> Tensor`: default is the model's returned `loss` when its output has one,
      else cross-entropy of the logits against `labels`.
    - `compute_metrics(predictions, labels) -> dict`, or Transformers' `compute_metrics(eval_pred)` (an
      `EvalPrediction`: `.predictions`, `.label_ids`): numpy arrays of the whole split in (batches of different
      lengths padded with -100), floats out; the loop adds `eval_loss` and the `eval_` prefix.
    - `preprocess_logits_for_metrics(logits, labels) -> Tensor`: applied to each batch's logits before they are
      gathered for compute_metrics (e.g. an argmax, so that a vocabulary's logits are not kept), as in Transformers.
    - `processing_class`: the tokenizer (or processor) of a Transformers model, as Transformers' Trainer takes it:
      an export of the model saves it beside the model, for `from_pretrained` and `pipeline`.
    """

    train_dataset: Any
    model_init: ModelInit | None = None
    eval_dataset: Any = None
    test_dataset: Any = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    compute_loss: ComputeLoss | None = None
    compute_metrics: ComputeMetrics | None = None
    preprocess_logits_for_metrics: Callable[[Any, Any], Any] | None = None
    processing_class: Any = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.model_init is not None and not callable(self.model_init):
            raise TaskError(f"`model_init` is {self.model_init!r}, but must be callable as model_init(params)")
        from tunetrain.data import as_dataset

        self.train_dataset = as_dataset(self.train_dataset, "train_dataset")
        if self.train_dataset is None:
            raise TaskError("`train_dataset` is None, but a task needs training data")
        self.eval_dataset = as_dataset(self.eval_dataset, "eval_dataset")
        self.test_dataset = as_dataset(self.test_dataset, "test_dataset")
        for name in ("collate_fn", "compute_loss", "compute_metrics", "preprocess_logits_for_metrics"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TaskError(f"`{name}` is {value!r}, but must be callable or None")


def load_task(spec: str | Task) -> Task:
    """Load a task from `"pkg.module:attr"` or `"path/to/file.py:attr"`.

    `attr` is a `Task`, or a callable with no required arguments that returns one. Note: loading runs that
    module's code, so only load tasks you trust.
    """
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise TaskError(f"task {spec!r} must look like 'pkg.module:attr' or 'path/to/file.py:attr'")
    module_name, attr = spec.split(":")
    module = _import_task_module(module_name, spec)
    if not hasattr(module, attr):
        raise TaskError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}")
    obj = getattr(module, attr)
    if isinstance(obj, Task):
        return obj
    if not callable(obj):
        raise TaskError(f"task {spec!r} is a {type(obj).__name__}, but must be a Task or a function returning one")
    try:
        task = obj()
    except ConfigError:
        raise
    except Exception as exc:  # the task's own code failed: say what, in one line (the cause stays chained)
        raise TaskError(f"task {spec!r}: calling {attr} raised {type(exc).__name__}: {_first_line(exc)}") from exc
    if not isinstance(task, Task):
        raise TaskError(f"task {spec!r} returned a {type(task).__name__}, but must return a tunetrain.Task")
    if not task.name:
        task.name = spec
    return task


def _import_task_module(module_name: str, spec: str) -> Any:
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise TaskError(f"task {spec!r}: file {module_name!r} does not exist")
        unique = f"tunetrain_task_{abs(hash(str(path)))}"
        if unique in sys.modules:
            return sys.modules[unique]
        loader_spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[unique] = module
        try:
            loader_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[unique]
            raise _import_error(spec, module_name, exc) from exc
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise TaskError(f"task {spec!r}: no module named {exc.name!r}") from exc
    except (Exception, SystemExit) as exc:
        raise _import_error(spec, module_name, exc) from exc


def _import_error(spec: str, module_name: str, exc: BaseException) -> TaskError:
    if isinstance(exc, SystemExit):  # a module that calls sys.exit() when imported (a script, not a module)
        return TaskError(f"task {spec!r}: importing {module_name!r} called sys.exit({exc.code!r})")
    return TaskError(f"task {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
