"""Datasets from Arrow: a `pyarrow.Table` or a Parquet file as a map-style torch `Dataset`.

Each example is a dict of tensors, one per column; list columns (features) become 1-D tensors. Floating columns
become float32 (torch's default dtype), as HuggingFace datasets' torch format does. Columns are converted to
tensors once, when the dataset is built, so `__getitem__` only indexes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset, TensorDataset

from tunetrain.errors import TaskError

if TYPE_CHECKING:
    from collections.abc import Callable


class ArrowDataset(Dataset):
    """A `pyarrow.Table` (or Parquet file) whose rows are examples: `{column: tensor}`.

    `columns` picks and orders columns (default: all). Numeric and (nested) list-of-numeric columns only.
    """

    def __init__(self, source: pa.Table | str | Path, *, columns: list[str] | None = None) -> None:
        table = _read_table(source)
        names = columns if columns is not None else table.column_names
        missing = [name for name in names if name not in table.column_names]
        if missing:
            raise TaskError(f"columns {missing} are not in the table (it has {table.column_names})")
        self.columns = {name: _column_to_tensor(table, name) for name in names}
        self._length = table.num_rows

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.columns.items()}


class BatchedView(Dataset):
    """A `TensorDataset` or `ArrowDataset` that a DataLoader fetches a batch at a time: `__getitems__` indexes
    each tensor once with the batch's indices, where fetching example by example and stacking them (torch's
    default collation) costs a Python call per example. The batches, their order and their values are the same;
    the DataLoader's `collate_fn` must be `unwrap_batch`.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        index = torch.as_tensor(indices, dtype=torch.long)
        if isinstance(self.dataset, ArrowDataset):
            return [{name: values[index] for name, values in self.dataset.columns.items()}]
        return [tuple(tensor[index] for tensor in self.dataset.tensors)]


def unwrap_batch(items: list[Any]) -> Any:
    """The collate_fn of a DataLoader over a `BatchedView`: its one item is the whole batch."""
    return items[0]


def batched(dataset: Any, collate_fn: Callable | None) -> tuple[Any, Callable | None]:
    """The dataset and collate_fn a DataLoader should use: a `BatchedView` where the batch is the same with it
    (a TensorDataset or ArrowDataset, exactly those types, collated by torch's default), else both unchanged."""
    if collate_fn is None and type(dataset) in (TensorDataset, ArrowDataset):
        return BatchedView(dataset), unwrap_batch
    return dataset, collate_fn


def as_dataset(data: Any, what: str) -> Any:
    """A torch-usable dataset from what a `Task` was given: None, a Dataset, a Table, or a Parquet path."""
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (pa.Table, str, Path)):
        return ArrowDataset(data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    raise TaskError(
        f"`{what}` is a {type(data).__name__}, but must be a torch Dataset, a pyarrow Table or a Parquet path"
    )


def _read_table(source: pa.Table | str | Path) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    path = Path(source)
    if not path.exists():
        raise TaskError(f"Parquet file {str(path)!r} does not exist")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TaskError(f"{str(path)!r} is not a readable Parquet file: {exc}") from exc


def _column_to_tensor(table: pa.Table, name: str) -> torch.Tensor:
    column = table.column(name).combine_chunks()
    if column.null_count:
        raise TaskError(f"column {name!r} has {column.null_count} nulls, but examples must be complete")
    kind = column.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return _tensor(column.to_numpy(zero_copy_only=False))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        try:
            values = np.array(column.to_pylist())
        except (ValueError, TypeError) as exc:
            raise TaskError(f"column {name!r} holds lists of unequal length or non-numbers: {exc}") from exc
        if values.dtype == object or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise TaskError(f"column {name!r} holds lists of unequal length or non-numbers")
        return _tensor(values)
    raise TaskError(f"column {name!r} has type {kind}, but must be numeric or a list of numbers")


def _tensor(values: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(values).copy())
    return tensor.to(torch.get_default_dtype()) if tensor.is_floating_point() else tensor
