"""The built-in MNIST-1D tasks: `mlp()` and `cnn()`.

MNIST-1D (Greydanus & Kobak, 2020) is ten digit-like templates turned into noisy, shifted, scaled 1-D signals of
40 points: small enough to train on a CPU in seconds, yet it separates architectures (the paper's MLP reaches
~68% test accuracy, its CNN ~94%). The `mnist1d` package generates it locally (no download) from a fixed seed,
once per machine (then read from a cache file, see `cache_dir()`): 4000 training examples, of which a seeded
`EVAL_SIZE` are held out as the eval split (a search selects on it), and 1000 test examples, scored only at the
end of a final fit.

Batches are `(x, y)` pairs: `x` float32 of shape (batch, 40), `y` int64 class ids; the models return logits of
shape (batch, 10) and the loop's default cross-entropy is the loss.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import numbers
import os
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tunetrain.errors import ConfigError
from tunetrain.formatting import did_you_mean, show_value
from tunetrain.storage import write_local_file
from tunetrain.task import Task

logger = logging.getLogger(__name__)

NUM_FEATURES = 40
NUM_CLASSES = 10
EVAL_SIZE = 500  # held out of the 4000 training examples
SPLIT_SEED = 0  # fixes which examples are held out: the same in every process and every run

MLP_DEFAULTS: dict[str, Any] = {"hidden_size": 100, "num_layers": 2, "dropout": 0.0}
CNN_DEFAULTS: dict[str, Any] = {"channels": 32, "kernel_size": 5, "num_layers": 3, "dropout": 0.0}


def mlp() -> Task:
    """MNIST-1D with an `MLP`; params (defaults): `hidden_size` (100), `num_layers` (2), `dropout` (0.0).

    Trains to ~69% test accuracy (the paper's MLP: 68%) in ~2-3 s on one CPU thread with AdamW,
    `learning_rate=3e-2`, `weight_decay=0.1`, `per_device_train_batch_size=64`, `num_train_epochs=30`,
    `lr_scheduler_type="cosine"`, `warmup_ratio=0.1`.
    """
    return _task("mnist1d-mlp", _mlp_init)


def cnn() -> Task:
    """MNIST-1D with a `CNN`; params (defaults): `channels` (32), `kernel_size` (5), `num_layers` (3), `dropout` (0.0).

    Trains to ~95-96% test accuracy (the paper's CNN: 94%) in ~5-6 s on one CPU thread with AdamW,
    `learning_rate=3e-2`, `weight_decay=0.05`, `per_device_train_batch_size=64`, `num_train_epochs=30`,
    `lr_scheduler_type="cosine"`, `warmup_ratio=0.1`.
    """
    return _task("mnist1d-cnn", _cnn_init)


class MLP(nn.Module):
    """`num_layers` hidden layers of `hidden_size` units (Linear, ReLU, Dropout), then a linear classifier."""

    def __init__(self, *, hidden_size: int = 100, num_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = NUM_FEATURES
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_size
        self.layers = nn.Sequential(*layers, nn.Linear(width, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """The MNIST-1D paper's CNN: `num_layers` convolutions, then dropout and a linear classifier.

    Each convolution has `channels` filters of width `kernel_size`, stride 2 and "same" padding, then a ReLU: it
    halves the length, 40 -> 20 -> 10 -> 5 with the defaults. The classifier sees every position's features
    (flattened, not pooled): where a pattern sits in the signal is part of what tells the digits apart.
    """

    def __init__(self, *, channels: int = 32, kernel_size: int = 5, num_layers: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels, length = 1, NUM_FEATURES
        for _ in range(num_layers):
            layers += [nn.Conv1d(in_channels, channels, kernel_size, stride=2, padding=kernel_size // 2), nn.ReLU()]
            in_channels, length = channels, _halved_length(length, kernel_size)
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * length, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x.reshape(x.shape[0], 1, NUM_FEATURES)).flatten(1)
        return self.classifier(self.dropout(features))


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The fraction of examples whose largest logit is the label's."""
    return {"accuracy": float((predictions.argmax(-1) == labels).mean())}


def _task(name: str, model_init: Any) -> Task:
    splits = _splits()
    return Task(
        model_init=model_init,
        train_dataset=TensorDataset(*splits["train"]),
        eval_dataset=TensorDataset(*splits["eval"]),
        test_dataset=TensorDataset(*splits["test"]),
        compute_metrics=accuracy,
        name=name,
    )


# module-level (not lambdas) so that a task can be pickled to a search worker
def _mlp_init(params: Mapping[str, Any]) -> MLP:
    return MLP(**_model_kwargs(params, MLP_DEFAULTS, "mnist1d-mlp"))


def _cnn_init(params: Mapping[str, Any]) -> CNN:
    return CNN(**_model_kwargs(params, CNN_DEFAULTS, "mnist1d-cnn"))


def _model_kwargs(params: Mapping[str, Any] | None, defaults: dict[str, Any], model: str) -> dict[str, Any]:
    """`defaults` updated with `params`, each checked; every mistake is reported at once."""
    params = dict(params or {})
    takes = ", ".join(f"`{name}`" for name in sorted(defaults))
    unknown = [name for name in params if name not in defaults]
    errors = [
        f"`{name}` is not a param of the {model} model{did_you_mean(name, defaults, cutoff=0.7)}" for name in unknown
    ]
    kwargs = {}
    for name, default in defaults.items():
        value = params.get(name, default)
        kwargs[name] = _checked_dropout(value) if name == "dropout" else _checked_size(value)
        if kwargs[name] is None:
            rule = "a number >= 0 and < 1" if name == "dropout" else "an integer >= 1"
            errors.append(f"`{name}` is {show_value(value)}, but must be {rule}")
    if errors:
        raise ConfigError(f"{'; '.join(errors)} (the {model} model takes {takes})")
    return kwargs


def _checked_size(value: Any) -> int | None:
    # integer-valued floats (64.0, from a float search space or JSON) are accepted, as TrainingArguments does
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
        return None
    return int(value) if value >= 1 else None


def _checked_dropout(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if 0 <= value < 1 else None


def _halved_length(length: int, kernel_size: int) -> int:
    """The output length of a stride-2 convolution with padding `kernel_size // 2`."""
    return (length + 2 * (kernel_size // 2) - kernel_size) // 2 + 1


@functools.cache
def _splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`{"train", "eval", "test"}` -> (x float32 (n, 40), y int64 (n,)); once per process.

    Generating the data takes seconds (importing mnist1d, which imports matplotlib, then drawing 5000 signals),
    and every search worker needs it: the arrays are kept in a cache file (see `cache_dir`) after the first
    generation on a machine, and generated again when that file is missing or unreadable.
    """
    arrays = _cached_arrays()
    x = torch.as_tensor(arrays["x"], dtype=torch.float32)
    y = torch.as_tensor(arrays["y"], dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    held_out, kept = order[:EVAL_SIZE].sort().values, order[EVAL_SIZE:].sort().values
    test = (
        torch.as_tensor(arrays["x_test"], dtype=torch.float32),
        torch.as_tensor(arrays["y_test"], dtype=torch.int64),
    )
    return {"train": (x[kept], y[kept]), "eval": (x[held_out], y[held_out]), "test": test}


def cache_dir() -> Path:
    """Where generated data is kept: `$TUNETRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/tunetrain` (`~/.cache/tunetrain`)."""
    if os.environ.get("TUNETRAIN_CACHE_DIR"):
        return Path(os.environ["TUNETRAIN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tunetrain"


_ARRAYS = ("x", "y", "x_test", "y_test")


def _cached_arrays() -> dict[str, np.ndarray]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        generator = f"mnist1d-{version('mnist1d')}"
    except PackageNotFoundError:
        generator = "mnist1d"
    path = cache_dir() / f"{generator}-seed42.npz"  # get_dataset_args()'s defaults, seed 42
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in _ARRAYS}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # not generated on this machine yet, or a damaged file: generate again
    arrays = _generate()
    try:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_local_file(path, buffer.getvalue())  # a reader never sees half a file
    except OSError as exc:  # a read-only home: every process generates the data, as without a cache
        logger.debug("could not cache the MNIST-1D data in %s: %s", path.parent, exc)
    return arrays


def _generate() -> dict[str, np.ndarray]:
    # imported here: mnist1d imports matplotlib, which only generating the data should pay for
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global RNGs (to 42): put the caller's streams back as they were.
    # Never `get_dataset`: it downloads
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {name: np.asarray(data[name]) for name in _ARRAYS}
