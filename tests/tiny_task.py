"""A small synthetic classification task for fast tests: 4 classes from a random linear teacher."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from tunetrain import Task


def _data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=g)
    y = (x @ torch.randn(12, 4, generator=g)).argmax(1)
    return TensorDataset(x[:240], y[:240]), TensorDataset(x[240:], y[240:])


def model_init(params: dict[str, Any]) -> torch.nn.Module:
    hidden = int(params.get("hidden", 16))
    dropout = float(params.get("dropout", 0.1))
    norm = [torch.nn.BatchNorm1d(hidden)] if params.get("batchnorm") else []  # buffers, which DDP broadcasts
    model = torch.nn.Sequential(
        torch.nn.Linear(12, hidden), *norm, torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, 4)
    )
    if params.get("diverge_after"):
        return Diverging(model, int(params["diverge_after"]), float(params.get("diverge_to", "nan")))
    if params.get("oom_after"):
        return OutOfMemory(model, int(params["oom_after"]))
    return model


class OutOfMemory(torch.nn.Module):
    """Raises what PyTorch raises when the GPU is full, from training forward pass `after` + 1 on."""

    def __init__(self, inner: torch.nn.Module, after: int) -> None:
        super().__init__()
        self.inner = inner
        self.after = after
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.passes += 1
            if self.passes > self.after:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        return self.inner(x)


class Diverging(torch.nn.Module):
    """From training forward pass `after` + 1 on, its loss becomes NaN (`value` nan: NaN logits) or inf (`value`
    inf: class 0's logit is -inf, so an example labelled 0 has an infinite cross-entropy)."""

    def __init__(self, inner: torch.nn.Module, after: int, value: float) -> None:
        super().__init__()
        self.inner = inner
        self.after = after
        self.value = value
        self.passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if self.training:
            self.passes += 1
            if self.passes > self.after and math.isnan(self.value):
                return logits * self.value
            if self.passes > self.after:
                return torch.cat([torch.full_like(logits[:, :1], -self.value), logits[:, 1:]], dim=1)
        return logits


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float((predictions.argmax(-1) == labels).mean())}


def task() -> Task:
    train, evaluation = _data()
    return Task(
        model_init=model_init, train_dataset=train, eval_dataset=evaluation, test_dataset=evaluation,
        compute_metrics=accuracy, name="tiny",
    )  # fmt: skip


class DictModel(torch.nn.Module):
    """Takes a dict batch with `labels` and returns `{"loss", "logits"}`, as a Transformers model does."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(12, 4)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.linear(features)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits, labels)
        return out


def dict_task() -> Task:
    import pyarrow as pa

    train, evaluation = _data()

    def table(ds: TensorDataset) -> pa.Table:
        x, y = ds.tensors
        return pa.table({"features": [row.tolist() for row in x], "labels": y.numpy()})

    return Task(
        model_init=lambda params: DictModel(), train_dataset=table(train), eval_dataset=table(evaluation),
        compute_metrics=accuracy, name="tiny-dict",
    )  # fmt: skip


def broken_task() -> int:
    return 42
