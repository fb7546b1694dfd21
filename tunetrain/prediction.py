"""What an evaluation hands to `compute_metrics`, and what `Trainer.predict` returns, in Transformers' forms.

- `EvalPrediction(predictions, label_ids)`: unpacks as `predictions, labels = eval_pred`, as Transformers' does.
- `compute_metrics` is called the way it is written: with one `EvalPrediction` (Transformers' way) or with
  `(predictions, labels)` (tunetrain's first form).
- Predictions and labels of batches with different lengths (per-batch padding of tokens) are padded across
  batches with -100, as Transformers does, before they are concatenated.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from tunetrain.errors import ConfigError

PAD_INDEX = -100  # what Transformers pads predictions and labels with across batches (and what losses ignore)


class EvalPrediction:
    """The predictions and labels of a whole split: `.predictions`, `.label_ids` (numpy arrays, or tuples of them
    with several outputs or `label_names`) and `.inputs` (None); `predictions, labels = eval_pred` works."""

    def __init__(self, predictions: Any, label_ids: Any, inputs: Any = None) -> None:
        self.predictions = predictions
        self.label_ids = label_ids
        self.inputs = inputs

    def __iter__(self) -> Any:
        return iter((self.predictions, self.label_ids))

    def __getitem__(self, index: int) -> Any:
        return (self.predictions, self.label_ids)[index]

    def __len__(self) -> int:
        return 2


class PredictionOutput(NamedTuple):
    """`Trainer.predict`'s answer, as in Transformers: predictions, label_ids (None without labels), metrics."""

    predictions: Any
    label_ids: Any
    metrics: dict[str, float]


class Gathered:
    """The predictions and labels of an evaluation, batch by batch, on the CPU; `result()` concatenates them."""

    def __init__(self) -> None:
        self.predictions: list[Any] = []
        self.labels: list[Any] = []

    def add(self, predictions: Any, labels: Any) -> None:
        self.predictions.append(_to_cpu(predictions))
        if labels is not None:
            self.labels.append(_to_cpu(labels))

    @classmethod
    def interleaved(cls, parts: list[Gathered]) -> Gathered:
        """The batches of data-parallel processes' evaluations (process k scored batches k, k + N, ...) back in the
        dataset's order."""
        merged = cls()
        for index in range(max(len(part.predictions) for part in parts)):
            for part in parts:
                if index < len(part.predictions):
                    merged.predictions.append(part.predictions[index])
                    if index < len(part.labels):
                        merged.labels.append(part.labels[index])
        return merged

    def result(self) -> tuple[Any, Any]:
        predictions = _concat(self.predictions) if self.predictions else None
        labels = _concat(self.labels) if self.labels else None
        return predictions, labels


def call_compute_metrics(compute_metrics: Callable[..., Any], predictions: Any, labels: Any) -> Mapping[str, Any]:
    """`compute_metrics` called in the form it is written in (see the module docstring); its dict checked."""
    if _takes_one_argument(compute_metrics):
        computed = compute_metrics(EvalPrediction(predictions, labels))
    else:
        computed = compute_metrics(predictions, labels)
    if not isinstance(computed, Mapping):
        raise ConfigError(f"compute_metrics returned a {type(computed).__name__}, but must return a dict")
    return computed


def _takes_one_argument(function: Callable[..., Any]) -> bool:
    """Whether `function` takes exactly one positional argument (Transformers' `compute_metrics(eval_pred)`)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: the two-argument form, as before
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return False
    required = [p for p in positional if p.default is p.empty]
    return len(required) == 1 or (not required and len(positional) == 1)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return tuple(_to_cpu(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _to_cpu(v) for k, v in value.items()}
    raise ConfigError(
        f"predictions and labels must be tensors (or tuples or dicts of them), not {type(value).__name__}"
    )


def _concat(batches: list[Any]) -> Any:
    """The batches concatenated along the first dimension (numpy), padded with -100 where their other dimensions
    differ; tuples and dicts of tensors element by element."""
    first = batches[0]
    if isinstance(first, tuple):
        return tuple(_concat([batch[i] for batch in batches]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: _concat([batch[key] for batch in batches]) for key in first}
    if first.ndim == 0:
        return torch.stack(batches).numpy()
    shape = [max(batch.shape[d] for batch in batches) for d in range(1, first.ndim)]
    if all(list(batch.shape[1:]) == shape for batch in batches):
        return torch.cat(batches).numpy()
    total = sum(batch.shape[0] for batch in batches)
    out = torch.full((total, *shape), PAD_INDEX, dtype=first.dtype)
    row = 0
    for batch in batches:
        out[(slice(row, row + batch.shape[0]), *(slice(0, n) for n in batch.shape[1:]))] = batch
        row += batch.shape[0]
    return out.numpy()
