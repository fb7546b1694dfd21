"""What compute_metrics and Trainer.predict get, in Transformers' forms: an EvalPrediction or (predictions, labels),
batches of tokens padded across batches with -100, preprocess_logits_for_metrics, label_names, and
Trainer.predict on a split with or without labels (issue 13, part 1)."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_task
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tunetrain import ConfigError, EvalPrediction, PredictionOutput, Task, Trainer, TrainingArguments
from tunetrain.prediction import call_compute_metrics


def _args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=16,
                  per_device_eval_batch_size=7, learning_rate=0.01, report_to="none", disable_tqdm=True,
                  save_strategy="no", logging_strategy="no")  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def test_compute_metrics_written_the_transformers_way_gets_an_eval_prediction(tmp_path):
    seen = []

    def transformers_style(eval_pred):  # one argument, as Transformers calls it
        seen.append(eval_pred)
        predictions, labels = eval_pred  # unpacks, as Transformers' does
        assert predictions is eval_pred.predictions and labels is eval_pred.label_ids
        return {"accuracy": float((predictions.argmax(-1) == labels).mean())}

    task = tiny_task.task()
    two_arguments = Trainer(task, _args(tmp_path)).evaluate()
    task.compute_metrics = transformers_style
    one_argument = Trainer(task, _args(tmp_path)).evaluate()
    assert one_argument["eval_accuracy"] == two_arguments["eval_accuracy"]
    assert isinstance(seen[0], EvalPrediction) and seen[0].predictions.shape == (60, 4)
    assert seen[0].inputs is None and len(seen[0]) == 2 and seen[0][1] is seen[0].label_ids


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (lambda p: {"n": len(p)}, {"n": 2}),  # one argument: an EvalPrediction (whose length is 2)
        (lambda predictions, labels: {"n": len(predictions)}, {"n": 3}),  # two: the arrays
        (lambda p, scale=2: {"n": scale * len(p)}, {"n": 4}),  # a keyword with a default: still one
        (lambda *args: {"n": len(args)}, {"n": 2}),  # anything: the two arrays, as before
    ],
    ids=["eval_pred", "two arguments", "one and a default", "*args"],
)
def test_the_form_is_read_from_the_signature(function, expected):
    assert call_compute_metrics(function, np.zeros((3, 2)), np.zeros(3)) == expected


def test_compute_metrics_returning_no_dict_is_one_line():
    with pytest.raises(ConfigError, match="compute_metrics returned a float, but must return a dict"):
        call_compute_metrics(lambda p: 0.5, np.zeros((1, 2)), np.zeros(1))


# --- tokens: sequences of different lengths, padded per batch ---------------------------------------------------

VOCAB, TAGS = 12, 3


class Sentences(Dataset):
    """Token sequences of 3 to 9 tokens; each token's tag is its id mod 3 (learnable from the token alone)."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = [torch.randint(1, VOCAB, (int(torch.randint(3, 10, (1,), generator=g)),), generator=g)
                      for _ in range(n)]  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.items[index]
        return {"input_ids": ids, "labels": ids % TAGS}


def pad_per_batch(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pads to the longest sequence of the batch (as DataCollatorForTokenClassification does): labels with -100."""
    length = max(len(item["input_ids"]) for item in items)
    ids = torch.zeros(len(items), length, dtype=torch.long)
    labels = torch.full((len(items), length), -100, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item["input_ids"])] = item["input_ids"]
        labels[row, : len(item["labels"])] = item["labels"]
    return {"input_ids": ids, "labels": labels}


class Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.head = torch.nn.Linear(16, TAGS)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.embed(input_ids))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = torch.nn.functional.cross_entropy(logits.reshape(-1, TAGS), labels.reshape(-1))
        return out


def token_accuracy(eval_pred) -> dict[str, float]:
    predictions, labels = eval_pred
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    kept = labels != -100
    return {"accuracy": float((predictions[kept] == labels[kept]).mean())}


def _token_task(**extra) -> Task:
    return Task(model_init=lambda params: Tagger(), train_dataset=Sentences(64, 0), eval_dataset=Sentences(23, 1),
                collate_fn=pad_per_batch, compute_metrics=token_accuracy, **extra)  # fmt: skip


def test_token_predictions_of_batches_of_different_lengths_are_padded_across_batches_with_minus_100(tmp_path):
    # before: RuntimeError: Sizes of tensors must match except in dimension 0
    trainer = Trainer(_token_task(), _args(tmp_path, num_train_epochs=20, learning_rate=0.05))
    trainer.train()
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.9
    out = trainer.predict(trainer.task.eval_dataset)
    longest = max(len(item) for item in trainer.task.eval_dataset.items)
    assert out.predictions.shape == (23, longest, TAGS) and out.label_ids.shape == (23, longest)
    items = trainer.task.eval_dataset.items
    for row, ids in enumerate(items):  # each row: its own tokens, then -100
        assert (out.label_ids[row, : len(ids)] == (ids % TAGS).numpy()).all()
        assert (out.label_ids[row, len(ids) :] == -100).all()
        batch_length = max(len(other) for other in items[row // 7 * 7 : row // 7 * 7 + 7])  # 7 to a batch
        assert (out.predictions[row, batch_length:] == -100).all()  # padded across batches
        assert (out.predictions[row, :batch_length] != -100).all()  # the model's, on its batch's own padding too
    assert out.metrics["test_accuracy"] == metrics["eval_accuracy"]


def test_preprocess_logits_for_metrics_is_applied_to_each_batch_before_gathering(tmp_path):
    calls = []

    def argmax(logits, labels):
        calls.append((logits.shape, labels.shape))
        return logits.argmax(-1)

    trainer = Trainer(_token_task(preprocess_logits_for_metrics=argmax), _args(tmp_path))
    out = trainer.predict(trainer.task.eval_dataset)
    assert len(calls) == 4 and all(shape[:2] == labels for shape, labels in calls)  # 23 examples, 7 a batch
    assert out.predictions.ndim == 2 and out.predictions.dtype == np.int64


def test_label_names_name_the_keys_that_hold_the_labels(tmp_path):
    class Renamed(Sentences):
        def __getitem__(self, index):
            item = super().__getitem__(index)
            return {"input_ids": item["input_ids"], "tags": item["labels"]}

    def pad(items):
        padded = pad_per_batch([{"input_ids": i["input_ids"], "labels": i["tags"]} for i in items])
        return {"input_ids": padded["input_ids"], "tags": padded["labels"]}

    class TagModel(Tagger):
        def forward(self, input_ids, tags=None):
            return super().forward(input_ids, tags)

    task = Task(model_init=lambda params: TagModel(), train_dataset=Renamed(64, 0), eval_dataset=Renamed(23, 1),
                collate_fn=pad, compute_metrics=token_accuracy)  # fmt: skip
    metrics = Trainer(task, _args(tmp_path, label_names=["tags"])).evaluate()
    assert "eval_accuracy" in metrics and "eval_loss" in metrics
    with pytest.raises(ConfigError, match=r"`label_names` names \['target'\], but a batch has only the keys"):
        Trainer(task, _args(tmp_path, label_names=["target"])).evaluate()


def test_predict_on_a_split_without_labels_gives_predictions_only(tmp_path):
    class Unlabelled(Dataset):
        def __init__(self) -> None:
            self.x = torch.randn(10, 12)

        def __len__(self) -> int:
            return 10

        def __getitem__(self, index):
            return {"features": self.x[index]}

    task = tiny_task.dict_task()
    trainer = Trainer(task, _args(tmp_path))
    out = trainer.predict(Unlabelled())
    assert isinstance(out, PredictionOutput) and out.predictions.shape == (10, 4) and out.label_ids is None
    assert "test_loss" not in out.metrics and "test_accuracy" not in out.metrics and "test_runtime" in out.metrics
    labelled = trainer.predict(task.eval_dataset, metric_key_prefix="holdout")
    assert labelled.label_ids.shape == (60,) and {"holdout_loss", "holdout_accuracy"} <= set(labelled.metrics)


def test_every_output_of_a_model_that_returns_several_is_gathered_as_a_tuple(tmp_path):
    # a question answering model's start and end logits (Transformers passes them all, as a tuple)
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(12, 8)

        def forward(self, features, start=None, end=None):
            start_logits, end_logits = self.linear(features).split(4, dim=-1)
            loss = F.cross_entropy(start_logits, start) + F.cross_entropy(end_logits, end)
            return {"loss": loss, "start_logits": start_logits, "end_logits": end_logits}

    x = torch.randn(10, 12)
    data = [{"features": x[i], "start": torch.tensor(i % 4), "end": torch.tensor((i + 1) % 4)} for i in range(10)]
    task = Task(model_init=lambda params: TwoHeads(), train_dataset=data)
    out = Trainer(task, _args(tmp_path, label_names=["start", "end"])).predict(data)
    starts, ends = out.predictions
    assert starts.shape == ends.shape == (10, 4)
    assert isinstance(out.label_ids, tuple) and (out.label_ids[1] == np.array([(i + 1) % 4 for i in range(10)])).all()


def test_predict_on_an_unlabelled_tensor_dataset(tmp_path):
    from torch.utils.data import TensorDataset

    trainer = Trainer(tiny_task.task(), _args(tmp_path))
    out = trainer.predict(TensorDataset(torch.randn(9, 12)))
    assert out.predictions.shape == (9, 4) and out.label_ids is None
