"""Tests for `tunetrain.data`: Arrow tables and Parquet files as torch datasets, and batched fetching.

test_loop.py checks that a `BatchedView` gives a DataLoader the same batches as per-example fetching (flat
columns) and trains on a Parquet file; here the conversion rules, the errors, and nested columns.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset, default_collate

from tunetrain.data import ArrowDataset, BatchedView, as_dataset, batched, unwrap_batch
from tunetrain.errors import TaskError


def _table() -> pa.Table:
    return pa.table(
        {
            "x": pa.array([0.5, 1.5, 2.5], pa.float64()),
            "label": pa.array([0, 1, 2], pa.int64()),
            "mask": [True, False, True],
            "features": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
            "image": [[[1, 2], [3, 4]], [[5, 6], [7, 8]], [[9, 10], [11, 12]]],
        }
    )


# --- ArrowDataset --------------------------------------------------------------------------------------------------


def test_rows_are_dicts_of_tensors_with_torch_dtypes():
    dataset = ArrowDataset(_table())
    assert len(dataset) == 3
    row = dataset[1]
    assert list(row) == ["x", "label", "mask", "features", "image"]
    assert row["x"].dtype == torch.float32 and row["x"].item() == 1.5  # floats as torch's default dtype
    assert row["label"].dtype == torch.int64 and row["label"].item() == 1
    assert row["mask"].dtype == torch.bool and not row["mask"].item()
    assert row["features"].dtype == torch.float32 and row["features"].tolist() == [3.0, 4.0]
    assert row["image"].dtype == torch.int64 and row["image"].tolist() == [[5, 6], [7, 8]]


def test_columns_picks_and_orders_columns():
    dataset = ArrowDataset(_table(), columns=["label", "x"])
    assert list(dataset[0]) == ["label", "x"]


def test_a_missing_column_is_named_with_the_table_s_columns():
    with pytest.raises(TaskError, match=r"columns \['labels'\] are not in the table \(it has \['x', 'label'"):
        ArrowDataset(_table(), columns=["x", "labels"])


def test_a_table_in_several_chunks_reads_as_one():
    table = pa.concat_tables([_table(), _table()])
    assert table.column("x").num_chunks == 2
    dataset = ArrowDataset(table)
    assert len(dataset) == 6 and dataset[4]["features"].tolist() == [3.0, 4.0]


def test_a_parquet_file_reads_as_its_table(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(_table(), path)
    for source in (path, str(path)):
        dataset = ArrowDataset(source)
        assert len(dataset) == 3 and dataset[2]["image"].tolist() == [[9, 10], [11, 12]]


def test_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_text("label,x\n1,2\n")
    with pytest.raises(TaskError, match=r"'.*train\.parquet' is not a readable Parquet file"):
        ArrowDataset(path)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (pa.array([1.0, None, 3.0]), r"column 'c' has 1 nulls, but examples must be complete"),
        (pa.array(["a", "b", "c"]), r"column 'c' has type string, but must be numeric or a list of numbers"),
        (pa.array([[1.0], [2.0, 3.0], [4.0]]), r"column 'c' holds lists of unequal length or non-numbers"),
        (pa.array([["a"], ["b"], ["c"]]), r"column 'c' holds lists of unequal length or non-numbers"),
        (pa.array([{"a": 1}, {"a": 2}, {"a": 3}]), r"column 'c' has type struct<a: int64>, but must be numeric"),
    ],
)
def test_columns_that_are_not_numbers(column, message):
    with pytest.raises(TaskError, match=message):
        ArrowDataset(pa.table({"c": column}))


def test_an_unused_bad_column_is_no_error():
    table = _table().append_column("name", pa.array(["a", "b", "c"]))
    assert list(ArrowDataset(table, columns=["x"])[0]) == ["x"]


def test_the_dataset_does_not_share_memory_with_the_table():
    values = [1, 2]  # int64: arrow could hand its own buffer to numpy (a float64 column is converted anyway)
    table = pa.table({"x": pa.array(values, pa.int64())})
    dataset = ArrowDataset(table)
    dataset.columns["x"][0] = 9  # writable, and the table is not changed
    assert table.column("x").to_pylist() == values


# --- batched fetching ----------------------------------------------------------------------------------------------


def test_a_batched_view_of_nested_columns_gives_the_stacked_examples():
    dataset = ArrowDataset(_table())
    view, collate_fn = batched(dataset, None)
    assert collate_fn is unwrap_batch and len(view) == 3 and view[1]["label"].item() == 1
    (batch,) = view.__getitems__([2, 0])
    expected = default_collate([dataset[2], dataset[0]])
    assert list(batch) == list(expected)
    assert all(batch[k].dtype == expected[k].dtype and torch.equal(batch[k], expected[k]) for k in expected)


def test_a_dataloader_over_a_batched_view_keeps_the_last_short_batch():
    dataset = TensorDataset(torch.arange(10).float().reshape(5, 2), torch.arange(5))
    view, collate_fn = batched(dataset, None)
    loader = DataLoader(view, batch_size=2, sampler=SequentialSampler(view), collate_fn=collate_fn)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [2, 2, 1]
    assert torch.equal(batches[2][0], torch.tensor([[8.0, 9.0]])) and isinstance(batches[0], tuple)


def test_unwrap_batch_returns_the_one_item():
    assert unwrap_batch([{"x": 1}]) == {"x": 1}


def test_a_batched_view_wraps_any_dataset_given_it():
    view = BatchedView(TensorDataset(torch.zeros(3, 1)))
    assert len(view) == 3 and view[0][0].shape == (1,)


# --- as_dataset ----------------------------------------------------------------------------------------------------


def test_as_dataset_turns_tables_and_paths_into_datasets_and_leaves_the_rest(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(), path)
    tensors = TensorDataset(torch.zeros(2))
    items = [{"x": 1}, {"x": 2}]  # anything indexable with a length is taken as it is
    assert as_dataset(None, "eval_dataset") is None
    assert as_dataset(tensors, "train_dataset") is tensors
    assert as_dataset(items, "train_dataset") is items
    for source in (_table(), path, str(path)):
        dataset = as_dataset(source, "train_dataset")
        assert isinstance(dataset, ArrowDataset) and len(dataset) == 3


@pytest.mark.parametrize(("value", "kind"), [(3, "int"), ({1, 2}, "set"), (iter([1]), "list_iterator")])
def test_as_dataset_of_something_else_names_the_field_and_the_type(value, kind):
    with pytest.raises(TaskError, match=rf"^`test_dataset` is a {kind}, but must be a torch Dataset, a pyarrow Table"):
        as_dataset(value, "test_dataset")
