"""The built-in MNIST-1D task: splits, params, and a CNN that learns."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tunetrain import ConfigError, Trainer, TrainingArguments, load_task
from tunetrain.tasks import mnist1d


def test_splits_are_fixed_and_disjoint():
    task = mnist1d.cnn()
    assert (len(task.train_dataset), len(task.eval_dataset), len(task.test_dataset)) == (3500, 500, 1000)
    x, y = task.train_dataset.tensors
    assert x.shape == (3500, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    train_rows = {tuple(row.tolist()) for row in x}
    assert not any(tuple(row.tolist()) in train_rows for row in task.eval_dataset.tensors[0])
    assert torch.equal(mnist1d.mlp().eval_dataset.tensors[0], task.eval_dataset.tensors[0])  # generated once


def test_loading_the_data_leaves_the_global_rngs_alone():
    mnist1d._splits.cache_clear()
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    mnist1d.mlp()
    assert (random.random(), np.random.rand()) == expected


@pytest.mark.e2e
def test_generated_data_is_cached_and_regenerated_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNETRAIN_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    generate = mnist1d._generate

    def counting_generate():
        calls.append(1)
        return generate()

    monkeypatch.setattr(mnist1d, "_generate", counting_generate)
    first = mnist1d._cached_arrays()
    (cached,) = (tmp_path / "cache").glob("mnist1d-*.npz")
    second = mnist1d._cached_arrays()
    assert len(calls) == 1  # the second read came from the file
    assert all(np.array_equal(first[name], second[name]) for name in first)
    cached.write_bytes(b"not an npz")
    third = mnist1d._cached_arrays()
    assert len(calls) == 2 and np.array_equal(third["x"], first["x"])
    assert list((tmp_path / "cache").iterdir()) == [cached]  # rewritten whole, no temporary files left


@pytest.mark.e2e
def test_data_loads_without_a_writable_cache(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache directory would be")
    monkeypatch.setenv("TUNETRAIN_CACHE_DIR", str(blocked / "cache"))
    arrays = mnist1d._cached_arrays()
    assert arrays["x"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40)


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (mnist1d.cnn, {"chanels": 8}, r"`chanels` is not a param of the mnist1d-cnn model \(did you mean `channels`"),
        (mnist1d.cnn, {"channels": 2.5}, r"`channels` is 2.5, but must be an integer >= 1"),
        (mnist1d.mlp, {"dropout": 1.0}, r"`dropout` is 1.0, but must be a number >= 0 and < 1"),
        (mnist1d.mlp, {"hidden_size": 0}, r"`hidden_size` is 0"),
    ],
)
def test_bad_model_params(factory, params, message):
    with pytest.raises(ConfigError, match=message):
        factory().model_init(params)


def test_model_sizes_come_from_params():
    task = load_task("tunetrain.tasks.mnist1d:cnn")
    small, large = task.model_init({"channels": 8}), task.model_init({"channels": 64.0, "num_layers": 2})
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in large.parameters())
    assert task.model_init({})(torch.zeros(3, 40)).shape == (3, 10)


@pytest.mark.e2e
def test_the_cnn_learns(tmp_path):
    # a shortened mnist1d_cnn.yaml (10 of its 30 epochs): the full file reaches ~95% test accuracy
    task = mnist1d.cnn()
    args = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=10, per_device_train_batch_size=64, per_device_eval_batch_size=500,
        learning_rate=3e-2, weight_decay=0.05, lr_scheduler_type="cosine", warmup_ratio=0.1, eval_strategy="epoch",
        save_strategy="no", logging_strategy="no", metric_for_best_model="accuracy", report_to="none",
    )  # fmt: skip
    trainer = Trainer(task, args)
    trainer.train()
    assert trainer.evaluate(task.test_dataset, metric_key_prefix="test")["test_accuracy"] > 0.88
