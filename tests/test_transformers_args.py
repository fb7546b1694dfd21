"""Transformers' TrainingArguments that a Trainer user reaches for (issue 13, part 8): optimizers and schedules by
Transformers' names (the schedules checked against Transformers' own where it is installed), label smoothing,
eval_on_start, gradient_checkpointing and remove_unused_columns."""

from __future__ import annotations

import pytest
import tiny_task
import torch
import torch.nn.functional as F

from tunetrain import ConfigError, Trainer, TrainingArguments
from tunetrain.loop import _make_optimizer, _make_scheduler


def _args(tmp_path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=16,
                  learning_rate=0.01, report_to="none", disable_tqdm=True, save_strategy="no",
                  logging_strategy="no")  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def _rates(args: TrainingArguments, steps: int = 40) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = _make_optimizer(model, args)
    scheduler = _make_scheduler(optimizer, args, steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("cosine_with_restarts", {"num_cycles": 3}),
        ("polynomial", {"power": 2.0, "lr_end": 1e-4}),
        ("inverse_sqrt", {"timescale": 7}),
        ("linear", {}),
        ("cosine", {}),
        ("cosine", {"num_cycles": 1.5}),  # Transformers' cosine takes num_cycles too
    ],
)
def test_schedules_follow_transformers_own(tmp_path, kind, kwargs):
    transformers = pytest.importorskip("transformers", reason="compared with transformers.get_scheduler")
    args = _args(tmp_path, lr_scheduler_type=kind, lr_scheduler_kwargs=kwargs or None, warmup_steps=5)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    theirs = transformers.get_scheduler(kind, optimizer, num_warmup_steps=5, num_training_steps=40,
                                        scheduler_specific_kwargs=kwargs)  # fmt: skip
    expected = []
    for _ in range(40):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        theirs.step()
    assert _rates(args) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_a_schedule_argument_the_schedule_does_not_take_is_one_line():
    with pytest.raises(ConfigError, match=r"`lr_scheduler_kwargs.power` is not an argument of lr_scheduler_type='co"):
        TrainingArguments(lr_scheduler_type="cosine", lr_scheduler_kwargs={"power": 2})


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_transformers_optimizer_names(tmp_path, tiny_task, optim):
    trainer = Trainer(tiny_task, _args(tmp_path, optim=optim, max_steps=3))
    trainer.train()
    assert isinstance(_make_optimizer(trainer.model, trainer.run_args), torch.optim.AdamW)
    if optim == "adamw_torch_fused":
        assert _make_optimizer(trainer.model, trainer.run_args).defaults["fused"] is True


def test_label_smoothing_smooths_the_loss_whatever_the_model_returns(tmp_path):
    task = tiny_task.dict_task()  # its model returns its own (unsmoothed) loss
    smoothed = Trainer(task, _args(tmp_path, label_smoothing_factor=0.2))
    plain = Trainer(task, _args(tmp_path))
    model = task.model_init({})
    batch = {"features": torch.randn(5, 12), "labels": torch.tensor([0, 1, 2, 3, 0])}
    outputs = model(**batch)
    expected = F.cross_entropy(outputs["logits"], batch["labels"], label_smoothing=0.2)
    assert torch.allclose(smoothed._compute_loss(outputs, batch["labels"]), expected)
    assert torch.allclose(plain._compute_loss(outputs, batch["labels"]), outputs["loss"])


def test_eval_on_start_scores_the_untrained_model_and_judges_nothing_by_it(tmp_path, tiny_task):
    args = _args(tmp_path, eval_on_start=True, eval_strategy="epoch", num_train_epochs=2,
                 metric_for_best_model="accuracy")  # fmt: skip
    trainer = Trainer(tiny_task, args)
    out = trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert [e["step"] for e in evaluations] == [0, 15, 30]
    assert trainer.state.num_evaluations == 2 and trainer.state.best_global_step in (15, 30)
    no_eval = Trainer(tiny_task, _args(tmp_path, eval_on_start=True, max_steps=2))
    assert not any(k.startswith("eval_") for k in no_eval.train().metrics)  # the start's is not the run's result
    assert out.metrics["eval_accuracy"] == evaluations[-1]["eval_accuracy"]


def test_gradient_checkpointing_needs_a_model_that_has_it(tmp_path, tiny_task):
    with pytest.raises(ConfigError, match=r"`gradient_checkpointing` is true, but the model \(Sequential\) has no"):
        Trainer(tiny_task, _args(tmp_path, gradient_checkpointing=True, max_steps=1)).train()


def test_gradient_checkpointing_on_a_transformers_model(tmp_path):
    pytest.importorskip("transformers", reason="needs transformers")
    pytest.importorskip("datasets", reason="needs datasets")
    import hf_task

    trainer = Trainer(hf_task.task(), _args(tmp_path, gradient_checkpointing=True, max_steps=2))
    trainer.train()
    model = trainer.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing


def test_unused_columns_of_a_datasets_dataset_are_removed_as_transformers_does(tmp_path):
    pytest.importorskip("transformers", reason="needs transformers")
    datasets = pytest.importorskip("datasets", reason="needs datasets")
    import dataclasses

    import hf_task

    task = hf_task.task()
    tok = task.processing_class
    raw = datasets.Dataset.from_dict(hf_task.sentences(64, 3))
    with_text = raw.map(lambda batch: tok(batch["text"]), batched=True)  # the text column kept, as users do
    task = dataclasses.replace(task, train_dataset=with_text, eval_dataset=with_text)
    assert Trainer(task, _args(tmp_path, max_steps=2)).evaluate()["eval_loss"] > 0  # before: the collator choked
    with pytest.raises(Exception):  # noqa: B017 (the collator's own error on a string column)
        Trainer(task, _args(tmp_path, max_steps=2, remove_unused_columns=False)).evaluate()


def test_reduce_lr_on_plateau_is_stepped_with_the_metric_at_each_evaluation_and_resumes(tmp_path, tiny_task):
    # a threshold no evaluation can beat (50% better than the best): with patience 0 each evaluation after the first
    # halves the rate (Transformers steps the schedule with metric_for_best_model at each evaluation)
    import shutil

    args = _args(tmp_path, lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="steps", eval_steps=3,
                 save_strategy="steps", save_steps=3, metric_for_best_model="loss", max_steps=12,
                 logging_strategy="steps", logging_steps=1, learning_rate=0.01,
                 lr_scheduler_kwargs={"factor": 0.5, "patience": 0, "threshold": 0.5})  # fmt: skip
    trainer = Trainer(tiny_task, args)
    trainer.train()

    def rates(state) -> dict[int, float]:
        return {e["step"]: e["learning_rate"] for e in state.log_history if "learning_rate" in e}

    expected = {step: 0.01 * 0.5 ** max(0, (step - 1) // 3 - 1) for step in range(1, 13)}
    assert rates(trainer.state) == pytest.approx(expected, rel=1e-12)
    # resumed from step 6: the schedule's state (best so far, bad evaluations) comes back with the checkpoint
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run" / "checkpoint-6", resumed_dir / "checkpoint-6")
    resumed = Trainer(tiny_task, args.replace(output_dir=str(resumed_dir)))
    resumed.train(resume_from_checkpoint=True)
    assert rates(resumed.state) == rates(trainer.state)
    with pytest.raises(ConfigError, match="reduce_lr_on_plateau needs an evaluation, but eval_strategy is 'no'"):
        TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"factor": 1.5}, r"`lr_scheduler_kwargs.factor` is 1.5, but must be in \(0, 1\)"),
     ({"patience": -1}, r"`lr_scheduler_kwargs.patience` is -1.0, but must be a whole number >= 0")],
)  # fmt: skip
def test_plateau_arguments_torch_would_refuse_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau", eval_strategy="epoch", lr_scheduler_kwargs=kwargs)


def test_a_forward_that_takes_only_kwargs_keeps_every_column(tmp_path):
    datasets = pytest.importorskip("datasets", reason="needs datasets")

    class Kwargs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, **inputs):
            logits = self.linear(inputs["x"])
            return {"logits": logits, "loss": F.cross_entropy(logits, inputs["labels"])}

    data = datasets.Dataset.from_dict({"x": [[0.0, 1.0, 2.0]] * 8, "labels": [0, 1] * 4}).with_format("torch")
    from tunetrain import Task

    task = Task(model_init=lambda params: Kwargs(), train_dataset=data, eval_dataset=data)
    assert Trainer(task, _args(tmp_path, max_steps=2, eval_strategy="no")).train().global_step == 2


def test_label_smoothing_shifts_a_causal_lms_labels_as_transformers_does(tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    from tunetrain import Task

    config = transformers.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 20, (2, 8))
    task = Task(model_init=lambda params: model, train_dataset=[{"input_ids": ids[0], "labels": ids[0]}])
    trainer = Trainer(task, _args(tmp_path, label_smoothing_factor=0.1, max_steps=1, eval_strategy="no"))
    trainer.train()
    outputs = model(input_ids=ids)
    expected = F.cross_entropy(outputs.logits[:, :-1].reshape(-1, 20), ids[:, 1:].reshape(-1), label_smoothing=0.1)
    assert torch.allclose(trainer._compute_loss(outputs, ids), expected)
