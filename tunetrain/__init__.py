"""tunetrain: a hyperparameter-search-centric training framework for PyTorch.

The public API is exactly what `__all__` lists; it is imported lazily so that the command line (and a search
driver that only reads experiment files) starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ArrowDataset": "tunetrain.data",
    "CheckpointError": "tunetrain.errors",
    "ConfigError": "tunetrain.errors",
    "EvalPrediction": "tunetrain.prediction",
    "Experiment": "tunetrain.experiment",
    "NonFiniteLossError": "tunetrain.errors",
    "PredictionOutput": "tunetrain.prediction",
    "Reporter": "tunetrain.reporting",
    "SearchSpace": "tunetrain.space",
    "StorageError": "tunetrain.errors",
    "Task": "tunetrain.task",
    "TaskError": "tunetrain.errors",
    "TrainOutput": "tunetrain.loop",
    "TrainerCallback": "tunetrain.reporting",
    "TrainerControl": "tunetrain.reporting",
    "Trainer": "tunetrain.loop",
    "TrainingArguments": "tunetrain.args",
    "TunetrainError": "tunetrain.errors",
    "load_experiment": "tunetrain.experiment",
    "load_model": "tunetrain.export",
    "load_task": "tunetrain.task",
    "read_results": "tunetrain.results",
    "search": "tunetrain.tuning.driver",
    "SearchResult": "tunetrain.results",
    "train": "tunetrain.loop",
}

__all__ = [
    "ArrowDataset",
    "CheckpointError",
    "ConfigError",
    "EvalPrediction",
    "Experiment",
    "NonFiniteLossError",
    "PredictionOutput",
    "Reporter",
    "SearchResult",
    "SearchSpace",
    "StorageError",
    "Task",
    "TaskError",
    "TrainOutput",
    "Trainer",
    "TrainerCallback",
    "TrainerControl",
    "TrainingArguments",
    "TunetrainError",
    "load_experiment",
    "load_model",
    "load_task",
    "read_results",
    "search",
    "train",
]

if TYPE_CHECKING:
    from tunetrain.args import TrainingArguments
    from tunetrain.data import ArrowDataset
    from tunetrain.errors import (
        CheckpointError,
        ConfigError,
        NonFiniteLossError,
        StorageError,
        TaskError,
        TunetrainError,
    )
    from tunetrain.experiment import Experiment, load_experiment
    from tunetrain.export import load_model
    from tunetrain.loop import Trainer, TrainOutput, train
    from tunetrain.prediction import EvalPrediction, PredictionOutput
    from tunetrain.reporting import Reporter, TrainerCallback, TrainerControl
    from tunetrain.results import SearchResult, read_results
    from tunetrain.space import SearchSpace
    from tunetrain.task import Task, load_task
    from tunetrain.tuning.driver import search


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunetrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
